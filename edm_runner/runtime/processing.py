"""A microservice compiled for processing: the DAG's nodes built into processors, run on
batches with the error policies applied.

Invariants:
- ``process(records)`` either returns normally, with every output of the batch (including
  dead letters) in ``outputs``, or raises ``ProcessingError`` (policy ``fail``); the caller
  then sends nothing of the batch and commits nothing past it.
- A step's fast path runs on the whole batch; only when it raises is the batch replayed
  event by event, so the error policy applies to exactly the failing events and the others
  go on unchanged and in order. The store writes of the failed pass are rolled back first
  (``state.stores.Journal``), and each replayed event runs under its own mark: a failing
  event leaves no store write behind, and every other event's writes are applied once
  (operators' and Python functions' with ``stores`` alike).
- Every event that does not reach a sink is accounted for: filtered, skipped (counted,
  first few logged) or dead-lettered (original bytes + error headers). Nothing is lost silently.
- Only ``EventError``s (the user's logic or data: decoding, schemas, expressions, declared
  functions, ...) follow the error policies. Anything else a step raises is a bug in edm:
  ``process`` raises ``InternalError`` and the caller commits nothing of the batch.
- Stores are reached only through the ``TaskStoreRef``s in ``catalog``; the caller binds them
  to the task of the records' partition before ``process`` (see ``runtime.tasks``).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from edm_runner.brokers.base import OutRecord, Record, TimestampBound
from edm_runner.errors import EventError, InternalError, ProcessingError, UserCodeError
from edm_runner.graph.dag import Dag, Node, build_dag
from edm_runner.operators.api import BuildContext, DeadLetters, Event, ExprFn, PauseTask, Processor, StoreCatalog
from edm_runner.operators.join import SideInput
from edm_runner.operators.registry import get as get_operator
from edm_runner.operators.sink import GroupBySink, TopicWriter, ToSink
from edm_runner.operators.table import TableMaterializer
from edm_runner.runtime.inflight import drive
from edm_runner.runtime.stats import ServiceStats
from edm_runner.serde import Serde, SerdeError, make_serde
from edm_runner.language.model import ErrorPolicy, PipelineProcessing, Pos, StreamSpec, Topology

log = logging.getLogger("edm.runtime")

SKIP_SAMPLE = 5  # skipped events logged per pipeline; the rest are only counted
FAIL = ErrorPolicy("fail")
MAX_BACKOFF_MS = 30_000  # the longest wait between two deliveries of an event


class ErrorHandler:
    """Applies one pipeline's error policy to a failed event."""

    def __init__(self, service: str, pipeline: str, policy: ErrorPolicy,
                 dead_letters: DeadLetters | None, stats: ServiceStats) -> None:
        self.service = service
        self.pipeline = pipeline
        self.policy = policy
        self.dead_letters = dead_letters
        self.stats = stats
        self.owner = f"pipeline {pipeline!r}"  # where the policy is set, for the hint

    def handle(self, origin: Record, step: str, pos: Pos, exc: EventError, attempts: int = 1) -> None:
        """Applies the policy to ``origin``'s failure at ``step``, after ``attempts`` deliveries
        (more than one: a dead letter carries ``edm.delivery.attempts``)."""
        error = str(exc) if isinstance(exc, UserCodeError) else f"{type(exc).__name__}: {exc}"
        where = f"{origin.topic}/{origin.partition}/{origin.offset}"
        kind = self.policy.kind
        if kind != "fail":
            errors = self.stats.errors_by_step
            counted = (self.pipeline, step, kind)
            errors[counted] = errors.get(counted, 0) + 1
        if kind == "skip":
            self.stats.skipped += 1
            n = self.stats.skipped_by_pipeline.get(self.pipeline, 0) + 1
            self.stats.skipped_by_pipeline[self.pipeline] = n
            if n <= SKIP_SAMPLE:
                log.warning("%s/%s: skipped the event at %s (topic/partition/offset): step %s at %s "
                            "failed: %s%s", self.service, self.pipeline, where, step, pos, error,
                            " (further skips of this pipeline are only counted)" if n == SKIP_SAMPLE else "")
            return
        if kind == "dead_letter" and self.dead_letters is not None:
            extra = exc.dead_letter_headers + ((("edm.delivery.attempts", str(attempts).encode()),)
                                               if attempts > 1 else ())
            self.dead_letters.write(origin, error, f"{step} at {pos}", extra)
            self.stats.dead_lettered += 1
            by_pipeline = self.stats.dead_lettered_by_pipeline
            by_pipeline[self.pipeline] = by_pipeline.get(self.pipeline, 0) + 1
            return
        raise ProcessingError(
            f"service {self.service!r}, pipeline {self.pipeline!r}: step {step} at {pos} failed on the "
            f"event at {where} (topic/partition/offset){f' after {attempts} attempts' if attempts > 1 else ''}: "
            f"{error}\n"
            f"    hint: nothing from this event on was committed; fix the step or the data, or set "
            f"`on_error: skip` or `on_error: {{dead_letter: <stream>}}` on {self.owner} to keep going") from exc


@dataclass(frozen=True)
class PausedRun:
    """A run that ``process_async`` gave up at ``next_offset`` (its lowest unfinished event)
    because a step raised ``PauseTask``: its first ``processed`` records are processed (their
    outputs in ``outputs``, their store writes in the task's buffers), nothing of the records
    from ``next_offset`` on is (no output, no store write)."""

    next_offset: int
    processed: int
    pause: PauseTask


@dataclass(eq=False)
class Step:
    """A compiled node. ``arms``/``whens`` are set for a branch (``when`` None = otherwise).
    ``fanout`` (a table node read by several pipelines or joins): each gets its own copies."""

    id: str
    label: str
    pos: Pos
    handler: ErrorHandler
    proc: Processor | None = None
    next: "Step | None" = None
    whens: list[ExprFn | None] = field(default_factory=list)
    when_pos: list[Pos] = field(default_factory=list)
    arms: list["Step | None"] = field(default_factory=list)
    fanout: list["Step"] = field(default_factory=list)


@dataclass(eq=False)
class Source:
    """``changes``: the values are a group_by's ``{"old", "new"}`` change records."""

    id: str
    pipeline: str
    topic: str
    decode_key: Callable[[bytes | None], Any]
    decode_value: Callable[[bytes | None], Any]
    handler: ErrorHandler
    next: Step | None
    pos: Pos
    changes: bool = False
    processing: PipelineProcessing = field(default_factory=PipelineProcessing)
    driven: bool = False  # driven event by event (``process_async``): per_event processing or an async step


class CompiledService:
    """The processors of one microservice and the batch loop body."""

    def __init__(self, topology: Topology, stats: ServiceStats,
                 functions: Mapping[str, Callable[..., Any]] | None = None, state_dir: Path | None = None) -> None:
        """``functions``: replace declared functions by name (``edm test``'s mocks); they are
        the user's code like the functions they replace (what they raise follows ``on_error``).
        ``state_dir``: where the instance keeps local state (``BuildContext.state_dir``)."""
        self.topology = topology
        self.state_dir = state_dir
        self.stats = stats
        self.dag: Dag = build_dag(topology)
        self.outputs: list[OutRecord] = []
        self.functions = _resolve_functions(topology, set(functions or ()))
        self.functions.update({name: _user_function(name, fn) for name, fn in (functions or {}).items()})
        self.catalog = StoreCatalog()
        self.shared: dict[str, Any] = {}  # BuildContext.shared: one dict for the whole service
        self.subtopology_of = {n: sub.id for sub in self.dag.subtopologies for n in sub.nodes}
        self.table_serdes: dict[str, tuple[Serde, Serde]] = {}  # table -> its stream's serdes
        # Filled by the runner when the service starts (``Broker.timestamp_bounds``); every writer reads it.
        self.timestamp_bounds: dict[str, TimestampBound] = {}
        self._contexts: dict[tuple[str, int], BuildContext] = {}
        self._handlers: dict[tuple[str, str | None], ErrorHandler] = {}
        self._steps: dict[str, Step] = {}
        self._bound: list[Any] = []  # the journals of the stores bound for the batch being processed
        # While ``_drive`` runs: (source offset, outputs from, to, dead letters among them) per
        # stretch of outputs an event appended (``_attribute``), so a pause can drop exactly
        # those of the events it gives up.
        self._spans: list[tuple[int, int, int, int]] | None = None
        self.sources: dict[str, list[Source]] = {}
        for node in self.dag.sources():
            source = self._source(node)
            self.sources.setdefault(source.topic, []).append(source)
        # The topics some pipeline reads event by event (``process_async``); the others keep the batch path.
        self.driven_topics = frozenset(topic for topic, sources in self.sources.items()
                                       if any(source.driven for source in sources))
        for name, table in topology.global_tables.items():
            BuildContext(topology, f"global_tables.{name}", self.functions, self.outputs,
                         catalog=self.catalog, stats=stats).table(name)
            spec = topology.streams[table.source]
            self.table_serdes[name] = (make_serde(spec.key), make_serde(spec.value))

    # -- building ---------------------------------------------------------------------------

    def _ctx(self, node: Node) -> BuildContext:
        key = (node.pipeline, self.subtopology_of[node.id])
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = BuildContext(self.topology, node.pipeline, self.functions, self.outputs,
                                                     subtopology=key[1], catalog=self.catalog, stats=self.stats,
                                                     internal_topics=self.dag.internal_topics,
                                                     timestamp_bounds=self.timestamp_bounds,
                                                     shared=self.shared, state_dir=self.state_dir)
        return ctx

    def _handler(self, pipeline: str, stream: str | None) -> ErrorHandler:
        """Processing errors: the pipeline's policy. Decode errors (``stream`` given): the
        pipeline's, else the stream's. Default: fail. A table's node has no pipeline: the
        policy of its stream."""
        key = (pipeline, stream)
        if key not in self._handlers:
            self._handlers[key] = self.error_handler(pipeline, stream, self.outputs)
        return self._handlers[key]

    def error_handler(self, pipeline: str, stream: str | None, outputs: list[OutRecord]) -> ErrorHandler:
        """A new handler with the policy ``_handler`` describes, writing dead letters to
        ``outputs`` (global tables, which are read outside of batches, keep their own)."""
        owner = self.topology.pipelines.get(pipeline)
        policy = owner.on_error if owner is not None else None
        if policy is None and stream is not None:
            policy = self.topology.streams[stream].on_error
        policy = policy or FAIL
        letters = None
        if policy.kind == "dead_letter" and policy.dead_letter:
            spec = self.topology.streams[policy.dead_letter]
            letters = DeadLetters(spec.topic, spec.partitions, outputs)
        handler = ErrorHandler(self.topology.name, pipeline, policy, letters, self.stats)
        if owner is None and stream is not None:
            handler.owner = f"stream {stream!r}"
        return handler

    def _writer(self, spec: StreamSpec) -> TopicWriter:
        return TopicWriter(spec.topic, spec.partitions, make_serde(spec.key), make_serde(spec.value),
                           bounds=self.timestamp_bounds)

    def _source(self, node: Node) -> Source:
        key_spec, value_spec = node.serdes
        source = Source(node.id, node.pipeline, node.topics[0], make_serde(key_spec).decode,
                        make_serde(value_spec).decode, self._handler(node.pipeline, node.stream),
                        self._step(node.children), node.pos, node.changes)
        pipeline = self.topology.pipelines.get(node.pipeline)
        if pipeline is not None and node.stream is not None:  # a repartition topic's tasks: partition order
            source.processing = pipeline.processing
        source.driven = source.processing.per_event or _awaits(source.next)
        return source

    def _step(self, children: list[str]) -> Step | None:
        if not children:
            return None
        node_id, = children
        step = self._steps.get(node_id)
        if step is not None:  # a merge point reached from several sources
            return step
        node = self.dag.nodes[node_id]
        ctx = self._ctx(node)
        step = self._steps[node_id] = Step(node.id, node.label, node.pos, self._handler(node.pipeline, None))
        if node.kind == "table":
            step.proc = TableMaterializer(node.table, ctx.table(node.table, node.pos), node.pos)
            source = self.topology.tables[node.table].source
            step.handler = self._handler(node.pipeline, source)  # the policy of the table's stream
            stream = self.topology.streams[source]
            self.table_serdes[node.table] = (make_serde(stream.key), make_serde(stream.value))
            if len(node.children) > 1:
                step.fanout = [self._step([child]) for child in node.children]
            else:
                step.next = self._step(node.children)
            return step
        if node.kind == "side":
            join = self._step(node.children)
            step.proc, step.next, step.handler = SideInput(join.proc), join.next, join.handler
            return step
        if node.kind == "branch":
            step.whens = [ctx.compile(b.when, b.pos) if b.when is not None else None for b in node.branch]
            step.when_pos = [b.pos for b in node.branch]
            step.arms = [self._step([arm]) if arm else None for arm in node.arms]
            return step
        if node.kind == "sink" and node.to is not None:
            to = node.to
            writers = {name: self._writer(self.topology.streams[name]) for name in to.targets()}
            select = ctx.compile(to.select, to.pos) if to.select else None
            step.proc = ToSink(writers, select, self.outputs, to)
        elif node.kind == "sink" and node.step.op == "group_by":
            topic = self.dag.internal_topics[node.topics[0]]
            writer = TopicWriter(topic.topic, topic.partitions, make_serde(topic.key), make_serde(topic.value),
                                 bounds=self.timestamp_bounds)
            step.proc = GroupBySink(ctx.compile(node.step.config["key"], node.pos), writer, self.outputs,
                                    node.changes, node.pos)
        else:
            op = get_operator(node.step.op)
            if op is None:
                raise ProcessingError(f"{node.pos}: unknown operator {node.step.op!r}")
            step.proc = ctx.awaiting(op.build(node.step, ctx))
            step.label = step.proc.label
        step.next = self._step(node.children)
        return step

    # -- running ----------------------------------------------------------------------------

    def process(self, records: list[Record]) -> None:
        """Runs one partition's records (in offset order) through every pipeline reading
        their topic; outputs accumulate in ``self.outputs``. Raises ``ProcessingError`` (an
        event failed under the ``fail`` policy) or ``InternalError`` (a bug in edm).
        Counts the records per pipeline in and out (``ServiceStats.in_by_pipeline``, ...)."""
        stats, outputs = self.stats, self.outputs
        topic = records[0].topic
        self._bound = self._journals()
        for journal in self._bound:
            journal.forget()  # the previous batch's writes are for good
        for source in self.sources.get(topic, ()):
            written, dead = len(outputs), stats.dead_lettered
            try:
                events = self._decode(source, records)
                if events and source.next is not None:
                    self._push(source.next, events)
            except (ProcessingError, InternalError):
                raise
            except Exception as exc:
                raise _internal(self.topology.name, source.id, source.pos, records, exc) from exc
            self._count(source, len(records), len(outputs) - written, stats.dead_lettered - dead)

    async def aclose(self) -> None:
        """Closes what the steps share (``BuildContext.shared``: the call steps' HTTP session)."""
        for value in self.shared.values():
            if hasattr(value, "aclose"):
                await value.aclose()

    async def process_async(self, records: list[Record]) -> PausedRun | None:
        """``process`` for a topic in ``driven_topics``: the pipelines whose source is ``driven``
        take their events one by one (``_drive``), as many at once as their ``processing``
        allows; it returns once every event is finished. The other pipelines of the topic take
        the batch path, after the driven ones. First it awaits ``run_starts(topic, partition,
        first offset)`` of every shared object that has one (``BuildContext.shared``): the runner
        committed every offset before a run it drives (``ServiceRunner._process``).

        When a step raises ``PauseTask``, the run is cut at the lowest unfinished event of the
        pipeline that paused: the pipelines after it process only the records before the cut,
        and the ``PausedRun`` says where the cut is. When the pipeline that paused is not the
        first driven one of the topic, the earlier ones processed records past the cut and
        their store writes cannot be told apart: the whole run is given up (cut at its first
        record: outputs dropped, store writes rolled back)."""
        stats, outputs = self.stats, self.outputs
        self._bound = self._journals()
        for journal in self._bound:
            journal.forget()
        first = records[0]
        for value in self.shared.values():
            run_starts = getattr(value, "run_starts", None)
            if run_starts is not None:
                await run_starts(first.topic, first.partition, first.offset)
        start, start_dead, marks = len(outputs), stats.dead_lettered, self._mark()
        cut = len(records)  # every pipeline processes records[:cut]
        pause: PauseTask | None = None
        ran: list[tuple[Source, int, int]] = []  # (source, outputs and dead letters before it)
        for source in sorted(self.sources.get(first.topic, ()), key=lambda s: not s.driven):
            if cut == 0:
                break
            ran.append((source, len(outputs), stats.dead_lettered))
            try:
                if source.driven:
                    stopped = await self._drive(source, records[:cut])
                    if stopped is not None:
                        cut, pause = stopped
                        if len(ran) > 1:
                            del outputs[start:]
                            self._rollback(marks)
                            stats.dead_lettered = start_dead
                            cut, ran = 0, []
                else:
                    events = self._decode(source, records[:cut])
                    if events and source.next is not None:
                        self._push(source.next, events)
            except (ProcessingError, InternalError):
                raise
            except Exception as exc:
                raise _internal(self.topology.name, source.id, source.pos, records, exc) from exc
        for i, (source, written, dead) in enumerate(ran):
            end, end_dead = ran[i + 1][1:] if i + 1 < len(ran) else (len(outputs), stats.dead_lettered)
            self._count(source, cut, end - written, end_dead - dead)
        return None if pause is None else PausedRun(records[cut].offset, cut, pause)

    async def _drive(self, source: Source, records: list[Record]) -> tuple[int, PauseTask] | None:
        """``records`` through ``source``'s driven pipeline (``runtime.inflight.drive`` under its
        ``processing``); None once every event finished. On ``PauseTask`` the events in flight
        are cancelled and the outputs of every event from the lowest unfinished one on are
        dropped (those that finished past it too: they are processed again after the pause);
        returns that event's index and the pause. Store writes of the events given up: under
        ``ordering: partition`` only the event that paused wrote, and ``_event`` rolled it back;
        the other orderings write no store (``language.concurrency``)."""
        outputs, stats = self.outputs, self.stats
        base = len(outputs)
        spans: list[tuple[int, int, int, int]] = []
        finished: set[int] = set()  # offsets of the events finished
        p = source.processing
        event = functools.partial(self._event, source)

        async def one(e: Event) -> None:
            await event(e)
            finished.add(e.origin.offset)

        self._spans = spans
        try:
            events = self._decode(source, records)  # a record that fails to decode is finished here
            if events and source.next is not None:
                await drive(events, one, p.ordering, p.max_in_flight, _record_key)
            return None
        except PauseTask as pause:
            cut = next(e.origin.offset for e in events if e.origin.offset not in finished)
            index = next(i for i, r in enumerate(records) if r.offset == cut)
            if sum(end - begin for _, begin, end, _ in spans) != len(outputs) - base:
                raise InternalError(f"service {self.topology.name!r}: pipeline {source.pipeline!r} wrote outputs no "
                                    "event owns (an asynchronous step must return its events, not write them); "
                                    "this is a bug in edm") from pause
            kept = [o for offset, begin, end, _ in spans if offset < cut for o in outputs[begin:end]]
            stats.dead_lettered -= sum(dead for offset, _, _, dead in spans if offset >= cut)
            del outputs[base:]
            outputs.extend(kept)
            return index, pause
        finally:
            self._spans = None

    def _attribute(self, offset: int, before: int, dead: int) -> None:
        """Notes that the outputs since index ``before`` (dead letters since ``dead``) belong to
        the event of source ``offset`` (while ``_drive`` runs; synchronous code only, so no
        other event appended meanwhile)."""
        spans = self._spans
        if spans is not None and len(self.outputs) != before:
            spans.append((offset, before, len(self.outputs), self.stats.dead_lettered - dead))

    def _count(self, source: Source, count_in: int, written: int, dead: int) -> None:
        """Counts ``count_in`` records in and ``written`` outputs (``dead`` dead letters apart) out."""
        stats, pipeline = self.stats, source.pipeline
        counted = (pipeline, source.topic)
        stats.in_by_pipeline[counted] = stats.in_by_pipeline.get(counted, 0) + count_in
        written -= dead
        if written:
            stats.out_by_pipeline[pipeline] = stats.out_by_pipeline.get(pipeline, 0) + written

    async def _event(self, source: Source, event: Event) -> None:
        """One event through ``source``'s pipeline, delivered up to ``processing.attempts`` times
        (each from a fresh copy of the decoded event with ``edm.delivery.attempt``), then its
        failure follows ``on_error`` at the step that failed."""
        attempts, backoff_ms = source.processing.attempts, source.processing.retry_backoff_ms
        key, value, old = event.key, event.value, event.old
        for attempt in range(1, attempts + 1):
            e = event
            if attempts > 1:
                headers = event.headers + (("edm.delivery.attempt", str(attempt).encode()),)
                e = Event(key, value, event.timestamp, headers, event.origin, old)
            marks = self._mark()
            try:
                failed = await self._through(source.next, e)
            except PauseTask:
                # Given up, to be processed again: its store writes go (under ``partition``
                # ordering it is the only event in flight; the others orderings write none).
                self._rollback(marks)
                raise
            if failed is None:
                return
            if attempt < attempts:
                delay = min(backoff_ms * 2 ** (attempt - 1), MAX_BACKOFF_MS)
                await asyncio.sleep(random.uniform(delay / 2, delay) / 1000)
        step, label, pos, exc = failed
        before, dead = len(self.outputs), self.stats.dead_lettered
        step.handler.handle(event.origin, label, pos, exc, attempts)
        self._attribute(event.origin.offset, before, dead)

    async def _through(self, step: Step | None, e: Event) -> tuple[Step, str, Pos, EventError] | None:
        """``e`` through ``step`` and the steps after it, awaiting the asynchronous ones; the
        failure (the step, its label and position, the error) or None. A synchronous step's
        store writes for ``e`` are rolled back when it fails (it runs without an await)."""
        while step is not None:
            if step.arms:
                try:
                    arm = self._arm(step.whens, e)
                except EventError as exc:
                    return step, f"{step.id} (when)", step.pos, exc
                if arm is None or step.arms[arm] is None:
                    return None
                step = step.arms[arm]
                continue
            proc = step.proc
            if proc.asynchronous:
                marks, before, dead = None, 0, 0
            else:
                marks, before, dead = self._mark(), len(self.outputs), self.stats.dead_lettered
            try:
                out = await proc.process_one_async(e) if proc.asynchronous else proc.process_one(e)
            except EventError as exc:
                if marks is not None:
                    self._rollback(marks)
                    self._attribute(e.origin.offset, before, dead)
                return step, f"{step.id} ({step.label})", step.pos, exc
            except PauseTask:
                raise
            except Exception as exc:
                raise _internal(self.topology.name, f"{step.id} ({step.label})", step.pos, [e.origin], exc) from exc
            if marks is not None:
                self._attribute(e.origin.offset, before, dead)
            children = step.fanout or [step.next]
            if len(out) == 1 and len(children) == 1:
                step, e = children[0], out[0]
                continue
            for i, child in enumerate(children):
                for o in out:
                    if i < len(children) - 1:
                        o = Event(o.key, o.value, o.timestamp, o.headers, o.origin, o.old)
                    failed = await self._through(child, o)
                    if failed is not None:
                        return failed
            return None
        return None

    def _decode(self, source: Source, records: list[Record]) -> list[Event]:
        kd, vd = source.decode_key, source.decode_value
        if source.changes:
            vd = _change_decoder(vd)
        try:
            events = [Event(kd(r.key), vd(r.value), r.timestamp_ms, r.headers, r) for r in records]
        except EventError:
            events = []
            for r in records:
                try:
                    events.append(Event(kd(r.key), vd(r.value), r.timestamp_ms, r.headers, r))
                except EventError as exc:
                    before, dead = len(self.outputs), self.stats.dead_lettered
                    source.handler.handle(r, f"{source.id} (decode)", source.pos, exc)
                    self._attribute(r.offset, before, dead)
        if source.changes:
            for e in events:
                e.value, e.old = e.value
        return events

    def _push(self, step: Step | None, batch: list[Event]) -> None:
        while step is not None and batch:
            if step.fanout:
                batch = self._run(step, batch)
                for i, child in enumerate(step.fanout):
                    last = i == len(step.fanout) - 1
                    self._push(child, batch if last else [Event(e.key, e.value, e.timestamp, e.headers,
                                                                e.origin, e.old) for e in batch])
                return
            if step.arms:
                for arm, part in zip(step.arms, self._split(step, batch)):
                    if arm is not None and part:
                        self._push(arm, part)
                return
            batch = self._run(step, batch)
            step = step.next

    def _journals(self) -> list[Any]:
        """The undo logs (``state.stores.Journal``, one per task) of the stores bound now."""
        found: list[Any] = []
        for use in self.catalog.uses.values():
            journal = getattr(use.ref.current, "journal", None)
            if journal is not None and all(journal is not j for j in found):
                found.append(journal)
        return found

    def _mark(self) -> list[tuple[Any, int]]:
        return [(journal, journal.mark()) for journal in self._bound]

    @staticmethod
    def _rollback(marks: list[tuple[Any, int]]) -> None:
        """Undo the store writes made since ``marks`` (a failed step or event)."""
        for journal, mark in marks:
            journal.rollback(mark)

    def _run(self, step: Step, batch: list[Event]) -> list[Event]:
        marks = self._mark()
        try:
            return step.proc.process(batch)
        except EventError:
            self._rollback(marks)  # the replay applies the events before the failing one again
            return self._one_by_one(step, batch)
        except Exception as exc:
            raise _internal(self.topology.name, f"{step.id} ({step.label})", step.pos,
                            [e.origin for e in batch], exc) from exc

    def _one_by_one(self, step: Step, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        proc = step.proc
        for e in batch:
            marks = self._mark()
            try:
                out.extend(proc.process_one(e))
            except EventError as exc:
                self._rollback(marks)
                step.handler.handle(e.origin, f"{step.id} ({step.label})", step.pos, exc)
            except Exception as exc:
                raise _internal(self.topology.name, f"{step.id} ({step.label})", step.pos, [e.origin],
                                exc) from exc
        return out

    @staticmethod
    def _arm(whens: list[ExprFn | None], e: Event) -> int | None:
        for i, f in enumerate(whens):
            if f is None or f(e.key, e.value, e):
                return i
        return None

    def _arm_checked(self, step: Step, e: Event) -> int | None:
        """``_arm`` with the error policy applied to the ``when`` that raised (the event then
        goes to no arm, and the store writes of its ``when``s are rolled back)."""
        marks = self._mark()
        for i, f in enumerate(step.whens):
            try:
                if f is None or f(e.key, e.value, e):
                    return i
            except EventError as exc:
                self._rollback(marks)
                step.handler.handle(e.origin, f"{step.id}[{i}] (when)", step.when_pos[i], exc)
                return None
        return None

    def _split(self, step: Step, batch: list[Event]) -> list[list[Event]]:
        """First match wins; an event no arm matches is dropped (like a filter)."""
        parts: list[list[Event]] = [[] for _ in step.arms]
        whens, arm_of = step.whens, self._arm
        marks = self._mark()
        try:
            arms = [arm_of(whens, e) for e in batch]
        except EventError:
            self._rollback(marks)
            arms = [self._arm_checked(step, e) for e in batch]
        for i, e in zip(arms, batch):
            if i is not None:
                parts[i].append(e)
        return parts


def _awaits(step: Step | None) -> bool:
    """True when an asynchronous step follows ``step`` (inclusive) in its sub-topology."""
    if step is None:
        return False
    if step.proc is not None and step.proc.asynchronous:
        return True
    return any(_awaits(s) for s in (step.next, *step.arms, *step.fanout))


def _record_key(event: Event) -> bytes | None:
    """What ``ordering: key`` orders by: the key of the input record, as read."""
    return event.origin.key


def _change_decoder(decode: Callable[[bytes | None], Any]) -> Callable[[bytes | None], Any]:
    """Decodes a group_by change record into (new, old), unpacked into value/old by ``_decode``."""

    def decode_change(data: bytes | None) -> tuple[Any, Any]:
        change = decode(data)
        if not isinstance(change, dict) or set(change) != {"old", "new"}:
            raise SerdeError(f"not a group_by change record: {change!r}")
        return change["new"], change["old"]

    return decode_change


def _internal(service: str, step: str, pos: Pos, records: list[Record | None], exc: Exception) -> InternalError:
    """The error that stops a service when a step raised something that is not an
    ``EventError``: a bug in edm, not in the topology or the data."""
    located = [r for r in records if r is not None]
    where = ""
    if located:
        first, last = located[0], located[-1]
        where = f" on the event at {first.topic}/{first.partition}/{first.offset}" if len(located) == 1 else \
            f" on the events at {first.topic}/{first.partition}/{first.offset}..{last.offset}"
    return InternalError(
        f"service {service!r}: step {step} at {pos} failed{where} (topic/partition/offset) with "
        f"{type(exc).__name__}: {exc}. This is a bug in edm, not in the topology or the data; nothing "
        "from this batch on was committed")


def _user_function(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with whatever it raises turned into ``UserCodeError`` (the user's code: the
    ``on_error`` policy applies), wherever edm calls it (expressions, partitioners)."""

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except EventError:
                raise
            except Exception as exc:
                raise UserCodeError(exc) from exc

        return call_async

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EventError:
            raise
        except Exception as exc:
            raise UserCodeError(exc) from exc

    return call


def _resolve_functions(topology: Topology, replaced: set[str]) -> dict[str, Callable[..., Any]]:
    """The declared functions, imported; those in ``replaced`` are not imported."""
    if not topology.functions:
        return {}
    from edm_runner.language.functions import resolve_function

    return {name: _user_function(name, resolve_function(f.python, topology.base_dir))
            for name, f in topology.functions.items() if name not in replaced}
