"""The operator API: what operators build (processors) and with what (``BuildContext``, store
references), what flows through them (``Event``) and what they emit (``OutRecord``). The
operators own it; the runtime implements the stores, binds the refs and drives the processors.
It imports no broker and no runtime: ``edm validate`` builds nothing of the runtime.

Events. The event that flows through a pipeline.

Invariant: an ``Event`` object belongs to exactly one batch at a time (a branch hands each
event to one child; every source node decodes its own events), so steps may update
``key``/``value`` in place once their new values are all computed.

Processors. A processor works on BATCHES. ``process(batch)`` is the fast path: it must either
return the full result or raise before any visible side effect (compute new values first, then assign),
because when it raises (an ``EventError``) the runtime replays the batch through
``process_one`` event by event so that the error policy applies to exactly the failing event.
A step that writes state event by event is an ``EventwiseProcessor`` instead:
the replay returns the remembered outputs of the events it already applied. Either way a batch
with a failing event gives what the batch without it gives (tests/test_trust.py runs that
contract over every processor).

Asynchronous steps. An ``AsyncPerEventProcessor`` awaits per event (``process_one_async``):
an I/O call (the awaited expression of a step that calls a Python function declared
``async def``: ``AwaitedExpressions``; a future ``call`` step). The runtime drives a pipeline
with such a step event by event, with as many events of a task in flight as the pipeline's
``processing`` allows (docs/design/concurrency.md); pipelines without one keep the batch path.

Stateful operators get their stores at build time as ``StoreRef``s (``BuildContext.store`` /
``BuildContext.table``) and call ``ref.get()`` once per ``process(batch)``: the runtime binds
every ref of a sub-topology to the stores of the task whose partition the batch came from.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from edm_runner.errors import EdmError, EventError
from edm_runner.records import Headers, OutRecord, Record, TimestampBound
from edm_runner.records.partitioner import DefaultPartitioner
from edm_runner.language.model import NOWHERE, Pos, StoreSpec, StoreType, StreamSpec, Topology

if TYPE_CHECKING:
    from edm_runner.graph.dag import InternalTopic

__all__ = ["AsyncPerEventProcessor", "AwaitedExpressions", "PauseTask",
           "BuildContext", "Counters", "DeadLetters", "Event", "EventwiseProcessor", "ExprFn", "Headers", "LateEvents",
           "OutRecord", "PassThrough", "PerEventProcessor", "Processor", "Record", "StoreCatalog", "StoreUse",
           "TaskStoreRef", "changelog_topic", "event_time", "repartition_topic"]

# The latest event time accepted: 9999-12-31T23:59:59.999Z. With every duration at most 100 years
# (spec.durations.MAX_DURATION_MS), every window start, end, join bound and retention mark computed
# from an accepted time stays far inside the signed 64 bits that stores and record timestamps hold,
# so no time computation downstream needs its own check.
MAX_EVENT_TIME_MS = 253_402_300_799_999


def event_time(t: Any) -> int:
    """``t`` as the time of an event for windows and joins, or EventError (an error of that event,
    which follows the pipeline's on_error): an integer of ms in [0, MAX_EVENT_TIME_MS]."""
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise EventError(f"the event time must be a non-negative integer of milliseconds, got {t!r}")
    if t > MAX_EVENT_TIME_MS:
        raise EventError(f"the event time {t} ms is past the latest time edm accepts, {MAX_EVENT_TIME_MS} "
                         f"(9999-12-31T23:59:59.999Z); is it in micro- or nanoseconds?")
    return t


class Event:
    """A decoded event. ``origin`` is the broker record it came from (kept for dead letters).

    ``old`` is set only on table-change events (a pipeline ``from:`` a table): the key's value
    before the change (None when the key was new); ``value`` None means the key was deleted.
    """

    __slots__ = ("key", "value", "timestamp", "headers", "origin", "old")

    def __init__(self, key: Any, value: Any, timestamp: int, headers: Headers, origin: Record,
                 old: Any = None) -> None:
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.headers = headers
        self.origin = origin
        self.old = old

    @property
    def topic(self) -> str:
        return self.origin.topic

    @property
    def partition(self) -> int:
        return self.origin.partition

    @property
    def offset(self) -> int:
        return self.origin.offset

    @property
    def header_map(self) -> dict[str, str]:
        """The headers as text (what expressions see as ``headers``); later duplicates win."""
        return {k: v.decode("utf-8", "replace") for k, v in self.headers}

    def derive(self, key: Any, value: Any) -> "Event":
        """A new event with the same timestamp, headers and origin (flat_map outputs)."""
        return Event(key, value, self.timestamp, self.headers, self.origin)

    def __repr__(self) -> str:
        return f"Event(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp})"


ExprFn = Callable[[Any, Any, Event], Any]


class Processor:
    """One step of a pipeline. ``label`` names it in errors (``filter``, ``branch[1].when``).

    A subclass writes its logic once: ``process_one(event)`` (then the batch path applies it
    event by event, which keeps the contract when ``process_one`` changes nothing it was given:
    ``flat_map`` derives new events), or ``process(batch)`` (then the replay of one event is a
    batch of one). ``PerEventProcessor`` derives both from a per-event ``compute`` + ``emit``."""

    label: str = "step"
    pos: Pos = NOWHERE
    asynchronous = False  # True: the runtime awaits ``process_one_async`` (``AsyncPerEventProcessor``)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.process is Processor.process and cls.process_one is Processor.process_one:
            raise TypeError(f"{cls.__name__} must define process or process_one")

    def process(self, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in batch:
            out.extend(self.process_one(event))
        return out

    def process_one(self, event: Event) -> list[Event]:
        return self.process([event])

    def process_other(self, batch: list[Event]) -> list[Event]:
        """A join's other side: events of the other stream (stream-stream join) or change
        events of the other table (table-table join), same contract as ``process``."""
        raise NotImplementedError(f"{self.label} has no other side")


class PerEventProcessor(Processor):
    """A stateless step with at most one output per event: ``compute(event)`` (may raise an
    ``EventError``; changes nothing), then ``emit(event, result)``: the output event (the input,
    possibly updated in place) or None to drop it; never raises. The batch path computes every
    result before it emits any, so a batch that raises has changed nothing, and the replay of
    one event is ``compute`` + ``emit``."""

    def compute(self, event: Event) -> Any:
        raise NotImplementedError

    def emit(self, event: Event, result: Any) -> Event | None:
        raise NotImplementedError

    def process(self, batch: list[Event]) -> list[Event]:
        compute, emit = self.compute, self.emit
        results = [compute(e) for e in batch]
        out: list[Event] = []
        append = out.append
        for e, r in zip(batch, results):
            e = emit(e, r)
            if e is not None:
                append(e)
        return out

    def process_one(self, event: Event) -> list[Event]:
        e = self.emit(event, self.compute(event))
        return [] if e is None else [e]


class AsyncPerEventProcessor(Processor):
    """A step that awaits something per event: ``async process_one_async(event)`` returns the
    event's outputs, or raises an ``EventError`` (the pipeline's ``processing.attempts``, then its
    ``on_error``, apply). The runtime awaits it for one event at a time per key (``ordering:
    key``), per task (``partition``) or not at all (``none``), up to ``max_in_flight`` per task,
    and commits an offset only once every event before it is finished.

    Invariants an implementation keeps: it writes no store (events of different keys interleave
    at its awaits; the language refuses store-writing steps in a concurrent pipeline), it changes
    the event it was given only after its awaits (a retry starts from a fresh copy), and a
    cancellation (the batch failed, the service stops) leaves nothing behind: the event is
    processed again after the restart. A step that must wait longer than a poll interval
    raises ``PauseTask`` instead of waiting."""

    asynchronous = True

    async def process_one_async(self, event: Event) -> list[Event]:
        raise NotImplementedError

    def process(self, batch: list[Event]) -> list[Event]:
        raise TypeError(f"{self.label} is asynchronous: the runtime awaits process_one_async")


class PauseTask(Exception):
    """Raised by ``process_one_async`` when the step cannot go on for a while (its endpoint's
    circuit breaker is open). Not an event's failure: no attempt is used, ``on_error`` does not
    apply. The runtime gives up the event's run from its lowest unfinished event on (nothing of
    those events is written, their offsets are not committed, the partition is sought back to
    the first of them), pauses the task's input partitions at the consumer (no fetch, while
    the member keeps polling) and resumes them once ``until()`` returns; the events are then
    processed again. ``until`` returns when one request may be tried (the breaker half-open):
    the resumed events themselves are the probe (docs/design/calls.md)."""

    def __init__(self, reason: str, until: Callable[[], Awaitable[None]]) -> None:
        super().__init__(reason)
        self.until = until


class AwaitedExpressions(AsyncPerEventProcessor):
    """A ``PerEventProcessor`` whose expression calls a Python function declared ``async def``
    (``filter``, ``map_values``, ...): its ``compute`` returns the call's awaitable (or, for
    ``map``, a pair that may hold one), awaited here before ``emit``."""

    def __init__(self, step: PerEventProcessor) -> None:
        self.step = step
        self.label = step.label
        self.pos = step.pos

    async def process_one_async(self, event: Event) -> list[Event]:
        result = self.step.compute(event)
        if isinstance(result, tuple):
            result = tuple([await r if inspect.isawaitable(r) else r for r in result])
        elif inspect.isawaitable(result):
            result = await result
        e = self.step.emit(event, result)
        return [] if e is None else [e]


class EventwiseProcessor(Processor):
    """A step that applies events one at a time to state. When ``process`` raises at event i,
    the runtime rolls back the store writes of the whole call (``state.stores.Journal``) and
    replays the batch event by event (``process_one``), each under its own mark: the events
    before i are applied once, and a failing event leaves no write behind even when it fails
    after a first write (a record too large for the second of two windows).

    Subclasses implement ``begin()`` (fetch the current task's stores and what the step keeps
    in them, e.g. stream time; called once per call, so a replay starts from the rolled back
    store), ``apply(event)`` and optionally ``apply_other(event)`` (a join's other side) and
    ``end(last_event)`` (work done once per batch after its events, e.g. emitting closed
    windows; its progress marks must be durable in the store so a skipped ``end`` is caught
    up by the next one).
    """

    def begin(self) -> None:
        raise NotImplementedError

    def apply(self, event: Event) -> list[Event]:
        raise NotImplementedError

    def apply_other(self, event: Event) -> list[Event]:
        raise NotImplementedError(f"{self.label} has no other side")

    def end(self, last: Event) -> list[Event]:
        return []

    def _run(self, batch: list[Event], apply: Callable[[Event], list[Event]]) -> list[Event]:
        self.begin()
        out: list[Event] = []
        for e in batch:
            out.extend(apply(e))
        out.extend(self.end(batch[-1]))
        return out

    def process(self, batch: list[Event]) -> list[Event]:
        return self._run(batch, self.apply)

    def process_one(self, event: Event) -> list[Event]:
        return self._run([event], self.apply)

    def process_other(self, batch: list[Event]) -> list[Event]:
        return self._run(batch, self.apply_other)


class TaskStoreRef:
    """A ``state.api.StoreRef``: ``get()`` is the store of the task being processed.

    Invariant: the runtime sets ``current`` before every batch of a task of the ref's
    sub-topology (global tables: once, to the global store); None outside processing.
    """

    __slots__ = ("name", "current")

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: Any = None

    def get(self) -> Any:
        return self.current


@dataclass
class StoreUse:
    """A store some operator of the service uses. ``subtopology`` None: a global table.
    ``params`` (what the operator's semantics depend on: window size, ...) go into the store's
    fingerprint with ``type``. ``changelog``: its changelog topic, None when it has none
    (``changelog: false``, or a table: its source topic is its changelog). ``source``: a
    table's source topic."""

    name: str
    type: StoreType
    params: dict[str, Any]
    subtopology: int | None
    changelog: str | None
    ref: TaskStoreRef
    source: str | None = None
    pos: Pos = NOWHERE


class StoreCatalog:
    """Every store of one service, registered while its operators are built."""

    def __init__(self) -> None:
        self.uses: dict[str, StoreUse] = {}

    def register(self, use: StoreUse) -> TaskStoreRef:
        """Registers ``use``, or returns the ref of the same store already registered by
        another operator of the same sub-topology (with the same type and params)."""
        known = self.uses.get(use.name)
        if known is None:
            self.uses[use.name] = use
            return use.ref
        if known.subtopology != use.subtopology:
            raise EdmError(f"{use.pos}: store {use.name!r} is used in two sub-topologies (also at "
                           f"{known.pos}, across a repartition or in an unconnected pipeline); a "
                           "store belongs to the tasks of one sub-topology: declare one store per use")
        if known.type != use.type or known.params != use.params:
            raise EdmError(f"{use.pos}: store {use.name!r} is used as {use.type} {use.params} here and "
                           f"as {known.type} {known.params} at {known.pos}; give each use its own store")
        return known.ref

    def global_tables(self) -> list[StoreUse]:
        return [u for u in self.uses.values() if u.subtopology is None]


class Counters(Protocol):
    """The counters operators add to (the runtime's ``ServiceStats`` is one); the
    ``*_by_pipeline`` maps are keyed by pipeline name."""

    late: int
    dead_lettered: int
    late_by_pipeline: dict[str, int]
    dead_lettered_by_pipeline: dict[str, int]


@dataclass
class _Counters:
    late: int = 0
    dead_lettered: int = 0
    late_by_pipeline: dict[str, int] = field(default_factory=dict)
    dead_lettered_by_pipeline: dict[str, int] = field(default_factory=dict)


class DeadLetters:
    """A dead-letter stream: the one place dead-letter records are built, for events that fail
    (the pipeline's ``on_error: {dead_letter: ...}``) and for late window events. A dead letter
    is the original record (key, value and timestamp bytes as read) with its headers plus
    ``edm.error``, ``edm.error.step`` and ``edm.source.topic``/``partition``/``offset``. Its
    partition is chosen as every sink chooses one: murmur2 of the key (as Kafka's Java client),
    round robin over the partitions for null keys."""

    def __init__(self, topic: str, partitions: int, outputs: list[OutRecord]) -> None:
        self.topic = topic
        self.outputs = outputs
        self.partitioner = DefaultPartitioner(partitions)

    def write(self, origin: Record, error: str, step: str, extra: Headers = ()) -> None:
        """``extra``: more headers after the error headers (``edm.delivery.attempts``)."""
        headers = origin.headers + (
            ("edm.error", error.encode()),
            ("edm.error.step", step.encode()),
            ("edm.source.topic", origin.topic.encode()),
            ("edm.source.partition", str(origin.partition).encode()),
            ("edm.source.offset", str(origin.offset).encode()),
        ) + tuple(extra)
        self.outputs.append(OutRecord(self.topic, self.partitioner(None, origin.key, None), origin.key,
                                      origin.value, origin.timestamp_ms, headers))


class LateEvents:
    """What a window step does with a late event: count it (``Counters.late``) and, with
    a dead-letter stream, write the original record there (``DeadLetters``)."""

    def __init__(self, stats: Counters, dead_letters: DeadLetters | None, pipeline: str, pos: Pos) -> None:
        self.stats = stats
        self.dead_letters = dead_letters
        self.pipeline = pipeline
        self.step = f"{pipeline} window at {pos}"

    def __call__(self, event: Event, reason: str) -> None:
        stats, pipeline = self.stats, self.pipeline
        stats.late += 1
        stats.late_by_pipeline[pipeline] = stats.late_by_pipeline.get(pipeline, 0) + 1
        if self.dead_letters is None:
            return
        self.dead_letters.write(event.origin, f"late event: {reason}", self.step)
        stats.dead_lettered += 1
        stats.dead_lettered_by_pipeline[pipeline] = stats.dead_lettered_by_pipeline.get(pipeline, 0) + 1


class PassThrough(Processor):
    """A step whose work happens elsewhere, so events go on unchanged: ``merge`` (its sources
    join in the DAG), ``group_by_key`` and ``window`` (the aggregation after them reads them)."""

    def __init__(self, label: str, pos: Pos) -> None:
        self.label = label
        self.pos = pos

    def process(self, batch: list[Event]) -> list[Event]:
        return batch


@dataclass
class BuildContext:
    """What an operator's ``build(step, ctx)`` may use. ``outputs`` collects the records the
    sinks of one batch produce; the runtime sends them after the batch. ``subtopology`` is the
    sub-topology of the step being built (stores registered here belong to its tasks).
    ``internal_topics``: the service's repartition topics with their serdes (``graph.dag``)."""

    topology: Topology
    pipeline: str
    functions: dict[str, Callable[..., Any]]
    outputs: list[OutRecord] = field(default_factory=list)
    subtopology: int = 0
    catalog: StoreCatalog = field(default_factory=StoreCatalog)
    stats: Counters = field(default_factory=_Counters)
    internal_topics: Mapping[str, "InternalTopic"] = field(default_factory=dict)
    timestamp_bounds: Mapping[str, TimestampBound] = field(default_factory=dict)  # operators.sink.TimestampBounds
    awaited: bool = False  # an expression compiled since the last ``awaiting`` calls an async function
    # Objects every step of one service shares (the call steps' HTTP session and resources): the
    # runtime gives every context of a service the same dict, awaits ``run_starts(topic,
    # partition, offset)`` of each value that has one before a run it drives event by event (every
    # offset before it is committed), and, when the service stops, ``aclose()`` of each that has one.
    shared: dict[str, Any] = field(default_factory=dict)
    # Where the instance keeps its local state (``edm run``); None: nothing is kept (``edm test``).
    state_dir: Path | None = None

    def compile(self, source: str, pos: Pos = NOWHERE, params: tuple[str, ...] = ("key", "value", "event")
                ) -> ExprFn:
        from edm_runner.language.concurrency import async_call_problem, async_functions, calls
        from edm_runner.language.expressions import compile_expression

        asynchronous = async_functions(self.functions)
        if asynchronous and calls(source, asynchronous):
            problem = async_call_problem(source, asynchronous)
            if problem:
                raise EdmError(f"{pos}: {problem}")
            self.awaited = True
        return compile_expression(source, params=params, functions=self.functions_for(source, pos),
                                  user_errors=True, limits=self.topology.processing.expression_limits)

    def awaiting(self, proc: Processor) -> Processor:
        """``proc``, awaited per event when an expression compiled for it since ``awaited`` was
        last reset calls an async function."""
        if not self.awaited:
            return proc
        self.awaited = False
        if not isinstance(proc, PerEventProcessor):
            raise EdmError(f"{proc.pos}: step {proc.label!r} calls a function declared `async def`, and only "
                           "map, map_values, select_key, filter and filter_not await their expression; call it "
                           "in a map_values before this step")
        return AwaitedExpressions(proc)

    def functions_for(self, source: str, pos: Pos = NOWHERE) -> dict[str, Callable[..., Any]]:
        """The functions an expression may call. A function that declares ``stores`` and that
        ``source`` calls gets them bound to this step's sub-topology (registered here, so its
        stores are restored and changelogged with the step's tasks)."""
        declared = self.topology.functions
        if not any(f.stores for f in declared.values()):
            return self.functions
        called = _called_names(source)
        functions = dict(self.functions)
        for name, spec in declared.items():
            if spec.stores and name in called:
                refs = {store: self.store(store, self.topology.stores[store].type, {}, pos)
                        for store in spec.stores}
                functions[name] = _with_stores(self.functions[name], FunctionStores(refs))
        return functions

    def function(self, name: str, pos: Pos = NOWHERE) -> Callable[..., Any]:
        try:
            return self.functions[name]
        except KeyError:
            declared = ", ".join(sorted(self.functions)) or "none"
            raise EdmError(f"{pos}: function {name!r} is not declared under `functions:` "
                           f"(declared: {declared}); declare it as `{name}: {{python: module:function}}`"
                           ) from None

    def stream(self, name: str, pos: Pos = NOWHERE) -> StreamSpec:
        try:
            return self.topology.streams[name]
        except KeyError:
            declared = ", ".join(sorted(self.topology.streams)) or "none"
            raise EdmError(f"{pos}: stream {name!r} is not declared under `streams:` "
                           f"(declared: {declared})") from None

    def internal_topic(self, name: str) -> "InternalTopic":
        """The repartition topic a step names ``name``, with the serdes the DAG decided."""
        return self.internal_topics[repartition_topic(self.topology.name, name)]

    def store(self, name: str, type: StoreType, params: dict[str, Any], pos: Pos = NOWHERE) -> TaskStoreRef:
        """The store ``name`` for this step, bound per task at run time. A name not declared
        under ``stores:`` is an implicit store (stream-stream join buffers) with a changelog.
        ``params``: JSON-able settings the stored data depends on (fingerprinted)."""
        spec = self.topology.stores.get(name) or StoreSpec(name, type, pos=pos)
        if spec.type != type:
            raise EdmError(f"{pos}: store {name!r} is declared as {spec.type} at {spec.pos} but this step "
                           f"needs a {type} store; declare `{name}: {{type: {type}}}` or use another store")
        changelog = changelog_topic(self.topology.name, name) if spec.changelog else None
        return self.catalog.register(StoreUse(name, type, dict(params), self.subtopology, changelog,
                                              TaskStoreRef(name), pos=pos))

    def table(self, name: str, pos: Pos = NOWHERE) -> TaskStoreRef:
        """The key-value store of the table or global table ``name`` (read only for operators:
        the table's materialization writes it)."""
        topology = self.topology
        spec = topology.tables.get(name) or topology.global_tables.get(name)
        if spec is None:
            declared = ", ".join(sorted([*topology.tables, *topology.global_tables])) or "none"
            raise EdmError(f"{pos}: table {name!r} is not declared under `tables:` or `global_tables:` "
                           f"(declared: {declared})")
        source = topology.streams[spec.source].topic
        sub = None if spec.is_global else self.subtopology
        return self.catalog.register(StoreUse(name, "key_value", {}, sub, None, TaskStoreRef(name),
                                              source=source, pos=spec.pos))

    def late_events(self, dead_letter: str | None, pos: Pos = NOWHERE) -> LateEvents:
        """The handler a window step calls as ``late(event, reason)`` for each late event:
        counted, and written to the ``dead_letter`` stream when one is given."""
        spec = self.stream(dead_letter, pos) if dead_letter is not None else None
        letters = DeadLetters(spec.topic, spec.partitions, self.outputs) if spec is not None else None
        return LateEvents(self.stats, letters, self.pipeline, pos)

    @property
    def base_dir(self) -> Path:
        return self.topology.base_dir


class FunctionStores(Mapping[str, Any]):
    """What a function with ``stores`` receives: store name -> the current task's store."""

    def __init__(self, refs: dict[str, TaskStoreRef]) -> None:
        self._refs = refs

    def __getitem__(self, name: str) -> Any:
        return self._refs[name].get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


def _with_stores(fn: Callable[..., Any], stores: FunctionStores) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, stores=stores, **kwargs)
    return call


def _called_names(source: str) -> set[str]:
    """Free names of an expression (a superset of the functions it calls)."""
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return set(meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse("{{ " + source + " }}")))
    except Exception:  # the compiler reports syntax errors with positions
        return set()


def repartition_topic(service: str, name: str) -> str:
    """The stable name of an internal repartition topic."""
    return f"{service}-{name}-repartition"


def changelog_topic(service: str, store: str) -> str:
    """The stable name of a store's changelog topic."""
    return f"{service}-{store}-changelog"
