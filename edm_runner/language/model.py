"""The typed model of a topology file, built by ``spec.build`` after validation.

Everything later stages need is here; they never look at raw YAML. Every element keeps the
``Pos`` of its YAML node so run-time errors can point into the file too.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edm_runner.language.limits import DEFAULT as DEFAULT_LIMITS, Limits
from edm_runner.serde.spec import SerdeSpec  # StreamSpec.key, .value (serde owns it)


@dataclass(frozen=True)
class Pos:
    """A 1-based position in a topology file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Pos("<none>", 0, 0)

StreamType = Literal["unkeyed", "keyed", "entity"]


@dataclass(frozen=True)
class ErrorPolicy:
    """What happens to an event that fails to decode or to process.

    fail: stop the service, nothing committed past the event. skip: count it, log a sample.
    dead_letter: write the original bytes to ``dead_letter`` (a declared stream) with the
    error and the source topic/partition/offset in headers.
    """

    kind: Literal["fail", "skip", "dead_letter"] = "fail"
    dead_letter: str | None = None
    pos: Pos = NOWHERE


@dataclass
class StreamSpec:
    name: str
    topic: str
    partitions: int = 1
    type: StreamType = "keyed"
    key: SerdeSpec = field(default_factory=lambda: SerdeSpec("string"))
    value: SerdeSpec = field(default_factory=SerdeSpec)
    on_error: ErrorPolicy | None = None
    replication_factor: int | None = None
    retention_ms: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    pos: Pos = NOWHERE
    compatibility: str = "BACKWARD"  # how its schemas may evolve (language.compat.MODES)

    def __post_init__(self) -> None:
        # One rule: null values are tombstones on entity streams, and only there; and there
        # every record has a key.
        entity = self.type == "entity"
        if self.value.tombstones != entity:
            self.value = replace(self.value, tombstones=entity)
        if self.key.keyed != entity:
            self.key = replace(self.key, keyed=entity)

    @property
    def compacted(self) -> bool:
        return self.type == "entity"


@dataclass
class FunctionSpec:
    """A Python function ``module:function`` resolved next to the topology file. A function
    with ``stores`` is called with the keyword argument ``stores``: a mapping from each of
    those store names to the store of the task being processed."""

    name: str
    python: str
    pos: Pos = NOWHERE
    stores: list[str] = field(default_factory=list)


@dataclass
class StepSpec:
    """One step of a pipeline: an operator name and its (schema-valid) configuration."""

    op: str
    config: Any
    pos: Pos = NOWHERE


@dataclass
class ToSpec:
    """A pipeline's sink: one declared stream, or one of ``streams`` chosen per event by the
    expression ``select`` (which must evaluate to one of the listed stream names)."""

    stream: str | None = None
    select: str | None = None
    streams: list[str] = field(default_factory=list)
    pos: Pos = NOWHERE

    def targets(self) -> list[str]:
        return [self.stream] if self.stream else list(self.streams)


@dataclass
class BranchSpec:
    """A branch: events for which ``when`` holds (first match wins; ``when=None`` is
    ``otherwise``) go through ``steps`` then to ``to``."""

    when: str | None
    steps: list[StepSpec] = field(default_factory=list)
    to: ToSpec | None = None
    pos: Pos = NOWHERE


Ordering = Literal["partition", "key", "none"]

# Bounds of ``pipelines.<p>.processing`` (the schema states them): events in flight per task, and
# delivery attempts per event.
MAX_IN_FLIGHT = 10_000
MAX_ATTEMPTS = 100


@dataclass
class PipelineProcessing:
    """``pipelines.<p>.processing``: how many events of one task the pipeline works on at once
    (docs/design/concurrency.md). ``ordering``: ``partition`` (one at a time, in offset order:
    the default), ``key`` (one event in flight per input record key, many keys at once),
    ``none``. ``max_in_flight``: events in flight per task. ``attempts``: deliveries of an event
    before its failure follows ``on_error`` (retried after ``retry_backoff_ms``, doubled per
    attempt, with jitter). ``per_event``: the runtime drives the pipeline event by event
    (``runtime.inflight``) rather than batch by batch: any setting but the defaults."""

    ordering: Ordering = "partition"
    max_in_flight: int = 100
    attempts: int = 1
    retry_backoff_ms: int = 100
    pos: Pos = NOWHERE

    @property
    def per_event(self) -> bool:
        return self.ordering != "partition" or self.attempts > 1


@dataclass
class PipelineSpec:
    name: str
    sources: list[str]
    steps: list[StepSpec] = field(default_factory=list)
    to: ToSpec | None = None
    branch: list[BranchSpec] = field(default_factory=list)
    on_error: ErrorPolicy | None = None
    pos: Pos = NOWHERE
    processing: PipelineProcessing = field(default_factory=PipelineProcessing)


@dataclass
class BrokerSpec:
    """``kind=local``: ``path`` is the embedded broker's directory (None: the state dir).
    ``kind=kafka``: ``options`` holds bootstrap_servers, client_id, security, producer, consumer."""

    kind: Literal["local", "kafka"] = "local"
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pos: Pos = NOWHERE


AssignmentStrategy = Literal["balanced", "round_robin", "static", "custom"]


@dataclass
class AssignmentSpec:
    """``processing.assignment``: how tasks are spread over a group's members (Kafka).
    ``instances`` (static): instance id -> task ids (``"<sub>_<partition>"``) pinned to it;
    ``reassign_after_ms`` (static): how long an absent instance's tasks wait (None: forever).
    ``custom``: a class ``module:Class`` (see ``runtime.assignment.strategies.CustomAssignor``)."""

    strategy: AssignmentStrategy = "balanced"
    instances: dict[str, list[str]] = field(default_factory=dict)
    reassign_after_ms: int | None = None
    custom: str | None = None
    pos: Pos = NOWHERE


@dataclass
class ProcessingSpec:
    """``instance_id``: this instance's static group membership id (the CLI's ``--instance-id``
    or ``EDM_INSTANCE_ID`` replace the file's). ``standby_replicas``: the default of every store.
    ``shutdown_grace_ms``: how long a SIGTERM may take (finish the batch, commit, close stores).
    ``start``: where the group starts on an input stream partition it has no committed offset for.
    ``expression_limits``: what one expression may build for one event (``spec.limits``)."""

    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    commit_interval_ms: int = 100
    max_batch: int = 1000
    start: Literal["earliest", "latest"] = "earliest"
    pos: Pos = NOWHERE
    instance_id: str | None = None
    standby_replicas: int = 0
    assignment: AssignmentSpec = field(default_factory=AssignmentSpec)
    shutdown_grace_ms: int = 30_000
    expression_limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class ResourceSpec:
    """``resources.NAME``: limits shared by the ``call`` steps that name it, as written.
    ``rate``: requests per ``per_ms`` with ``burst`` (default 1: evenly spaced); ``quota``:
    requests per ``quota_period_ms``, periods aligned on the wall clock (UTC).

    Invariant: every limit is PER INSTANCE (per ``edm run`` process); ``per_instance()`` divides
    a cluster-wide budget by ``divide_by_instances`` (each at least 1), which is what runs."""

    name: str
    rate: int | None = None
    per_ms: int = 1000
    burst: int | None = None
    max_in_flight: int | None = None
    quota: int | None = None
    quota_period_ms: int = 86_400_000
    divide_by_instances: int = 1
    pos: Pos = NOWHERE

    def per_instance(self) -> "ResourceSpec":
        n = self.divide_by_instances
        if n == 1:
            return self

        def part(v: int | None) -> int | None:
            return None if v is None else max(1, v // n)

        return replace(self, rate=part(self.rate), burst=part(self.burst), max_in_flight=part(self.max_in_flight),
                       quota=part(self.quota), divide_by_instances=1)


StoreType = Literal["key_value", "window", "session"]


@dataclass
class StoreSpec:
    """A declared state store (``stores:``). Its changelog topic is
    ``<service>-<name>-changelog`` (compacted), on unless ``changelog`` is False.
    ``standby_replicas``: how many other instances keep a hot copy; the store's own setting,
    else ``processing.standby_replicas`` (resolved when the model is built)."""

    name: str
    type: StoreType = "key_value"
    changelog: bool = True
    retention_ms: int | None = None
    standby_replicas: int = 0
    pos: Pos = NOWHERE


@dataclass
class TableSpec:
    """A table materialized from an entity stream (``tables:``, or ``global_tables:`` with
    ``is_global``): latest value per key, a null value deletes. Its key-value store has the
    table's name and no changelog: the source topic is its changelog (restored from it)."""

    name: str
    source: str
    is_global: bool = False
    pos: Pos = NOWHERE


@dataclass(frozen=True)
class IngestKey:
    """Where an ingested event's key comes from: exactly one of a request ``header``, a
    ``field`` of the value (a dotted path), an ``expression`` over ``value`` and ``headers``."""

    header: str | None = None
    field: str | None = None
    expression: str | None = None


@dataclass
class IngestSpec:
    """``POST path`` writes events to ``stream`` (its serdes and schema); ``key`` None: null keys."""

    path: str
    stream: str
    key: IngestKey | None = None
    pos: Pos = NOWHERE


@dataclass(frozen=True)
class TokenSource:
    """Bearer tokens: one per line of ``file`` (absolute), or in environment variable ``env``
    (separated by commas or whitespace); exactly one is set."""

    file: Path | None = None
    env: str | None = None


@dataclass
class HttpSpec:
    """``http:``: the service answers HTTP (docs/design/http.md). ``port`` 0: any free port.
    ``advertised_url`` None: derived from the address actually bound. ``serve``: the stores,
    tables and global tables that answer queries. ``auth``: scope (queries, ingest, metrics)
    -> its tokens; a scope absent is open. ``tls_cert``/``tls_key``: absolute PEM paths, written
    at ``tls_cert_pos``/``tls_key_pos``."""

    host: str = "0.0.0.0"
    port: int = 8080
    advertised_url: str | None = None
    serve: list[str] = field(default_factory=list)
    ingest: list[IngestSpec] = field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_cert_pos: Pos = NOWHERE
    tls_key_pos: Pos = NOWHERE
    auth: dict[str, TokenSource] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20
    request_timeout_ms: int = 10_000
    pos: Pos = NOWHERE


@dataclass
class Topology:
    """One microservice. ``name`` is its consumer group and the prefix of internal topics."""

    name: str
    source_file: Path
    description: str = ""
    broker: BrokerSpec = field(default_factory=BrokerSpec)
    processing: ProcessingSpec = field(default_factory=ProcessingSpec)
    streams: dict[str, StreamSpec] = field(default_factory=dict)
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    pipelines: dict[str, PipelineSpec] = field(default_factory=dict)
    stores: dict[str, StoreSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    global_tables: dict[str, TableSpec] = field(default_factory=dict)
    http: HttpSpec | None = None
    resources: dict[str, ResourceSpec] = field(default_factory=dict)
    kind: Literal["microservice"] = "microservice"

    @property
    def base_dir(self) -> Path:
        return self.source_file.parent


@dataclass
class BusinessTopology:
    """Several microservices sharing streams; each stream has exactly one writer."""

    name: str
    source_file: Path
    services: list[Topology] = field(default_factory=list)
    external_streams: list[str] = field(default_factory=list)
    description: str = ""
    broker: BrokerSpec = field(default_factory=BrokerSpec)
    kind: Literal["business"] = "business"
