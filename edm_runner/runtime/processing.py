"""A microservice compiled for processing: the DAG's nodes built into processors, run on
batches with the error policies applied.

Invariants:
- ``process(records)`` either returns normally, with every output of the batch (including
  dead letters) in ``outputs``, or raises ``ProcessingError`` (policy ``fail``); the caller
  then sends nothing of the batch and commits nothing past it.
- A step's fast path runs on the whole batch; only when it raises is the batch replayed
  event by event, so the error policy applies to exactly the failing events and the others
  go on unchanged and in order.
- Every event that does not reach a sink is accounted for: filtered, skipped (counted,
  first few logged) or dead-lettered (original bytes + error headers). Nothing is lost silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from edm_runner.brokers.base import OutRecord, Record
from edm_runner.errors import ProcessingError
from edm_runner.graph.dag import Dag, Node, build_dag
from edm_runner.operators.registry import get as get_operator
from edm_runner.runtime.event import Event
from edm_runner.runtime.node import BuildContext, ExprFn, Processor
from edm_runner.runtime.sink import DefaultPartitioner, TopicWriter
from edm_runner.runtime.stats import ServiceStats
from edm_runner.serde import make_serde
from edm_runner.spec.model import ErrorPolicy, Pos, StreamSpec, ToSpec, Topology

log = logging.getLogger("edm.runtime")

SKIP_SAMPLE = 5  # skipped events logged per pipeline; the rest are only counted
FAIL = ErrorPolicy("fail")


class ErrorHandler:
    """Applies one pipeline's error policy to a failed event."""

    def __init__(self, service: str, pipeline: str, policy: ErrorPolicy,
                 dead_letter: TopicWriter | None, outputs: list[OutRecord], stats: ServiceStats) -> None:
        self.service = service
        self.pipeline = pipeline
        self.policy = policy
        self.dead_letter = dead_letter
        self.dl_partitioner = DefaultPartitioner(dead_letter.partitions) if dead_letter else None
        self.outputs = outputs
        self.stats = stats

    def handle(self, origin: Record, step: str, pos: Pos, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        where = f"{origin.topic}/{origin.partition}/{origin.offset}"
        kind = self.policy.kind
        if kind == "skip":
            self.stats.skipped += 1
            n = self.stats.skipped_by_pipeline.get(self.pipeline, 0) + 1
            self.stats.skipped_by_pipeline[self.pipeline] = n
            if n <= SKIP_SAMPLE:
                log.warning("%s/%s: skipped the event at %s (topic/partition/offset): step %s at %s "
                            "failed: %s%s", self.service, self.pipeline, where, step, pos, error,
                            " (further skips of this pipeline are only counted)" if n == SKIP_SAMPLE else "")
            return
        if kind == "dead_letter" and self.dead_letter is not None:
            headers = origin.headers + (
                ("edm.error", error.encode()),
                ("edm.error.step", f"{step} at {pos}".encode()),
                ("edm.source.topic", origin.topic.encode()),
                ("edm.source.partition", str(origin.partition).encode()),
                ("edm.source.offset", str(origin.offset).encode()),
            )
            partition = self.dl_partitioner(None, origin.key, None)
            self.outputs.append(OutRecord(self.dead_letter.topic, partition, origin.key, origin.value,
                                          origin.timestamp_ms, headers))
            self.stats.dead_lettered += 1
            return
        raise ProcessingError(
            f"service {self.service!r}, pipeline {self.pipeline!r}: step {step} at {pos} failed on the "
            f"event at {where} (topic/partition/offset): {error}\n"
            f"    hint: nothing from this event on was committed; fix the step or the data, or set "
            f"`on_error: skip` or `on_error: {{dead_letter: <stream>}}` on pipeline "
            f"{self.pipeline!r} to keep going") from exc


class ToSink(Processor):
    """A pipeline's ``to``: one stream, or one per event chosen by ``select``."""

    def __init__(self, writers: dict[str, TopicWriter], select: ExprFn | None, outputs: list[OutRecord],
                 to: ToSpec) -> None:
        self.writers = writers
        self.select = select
        self.outputs = outputs
        self.label = f"to {to.stream}" if to.stream else "to (select)"
        self.pos = to.pos
        self.only = next(iter(writers.values())) if select is None else None

    def _writer(self, name: Any) -> TopicWriter:
        writer = self.writers.get(name) if isinstance(name, str) else None
        if writer is None:
            raise ValueError(f"`select` returned {name!r}; it must be one of {', '.join(self.writers)}")
        return writer

    def process(self, batch: list[Event]) -> list[Event]:
        if self.only is not None:
            self.outputs.extend(self.only.records(batch))
            return []
        f = self.select
        writers = [self._writer(f(e.key, e.value, e)) for e in batch]
        self.outputs.extend([w.record(e) for w, e in zip(writers, batch)])
        return []

    def process_one(self, event: Event) -> list[Event]:
        return self.process([event])


@dataclass(eq=False)
class Step:
    """A compiled node. ``arms``/``whens`` are set for a branch (``when`` None = otherwise)."""

    id: str
    label: str
    pos: Pos
    handler: ErrorHandler
    proc: Processor | None = None
    next: "Step | None" = None
    whens: list[ExprFn | None] = field(default_factory=list)
    when_pos: list[Pos] = field(default_factory=list)
    arms: list["Step | None"] = field(default_factory=list)


@dataclass(eq=False)
class Source:
    id: str
    topic: str
    decode_key: Callable[[bytes | None], Any]
    decode_value: Callable[[bytes | None], Any]
    handler: ErrorHandler
    next: Step | None
    pos: Pos


class CompiledService:
    """The processors of one microservice and the batch loop body."""

    def __init__(self, topology: Topology, stats: ServiceStats) -> None:
        self.topology = topology
        self.stats = stats
        self.dag: Dag = build_dag(topology)
        self.outputs: list[OutRecord] = []
        self.functions = _resolve_functions(topology)
        self._contexts: dict[str, BuildContext] = {}
        self._handlers: dict[tuple[str, str | None], ErrorHandler] = {}
        self._steps: dict[str, Step] = {}
        self.sources: dict[str, list[Source]] = {}
        for node in self.dag.sources():
            source = self._source(node)
            self.sources.setdefault(source.topic, []).append(source)

    # -- building ---------------------------------------------------------------------------

    def _ctx(self, pipeline: str) -> BuildContext:
        ctx = self._contexts.get(pipeline)
        if ctx is None:
            ctx = self._contexts[pipeline] = BuildContext(self.topology, pipeline, self.functions, self.outputs)
        return ctx

    def _handler(self, pipeline: str, stream: str | None) -> ErrorHandler:
        """Processing errors: the pipeline's policy. Decode errors (``stream`` given): the
        pipeline's, else the stream's. Default: fail."""
        key = (pipeline, stream)
        if key not in self._handlers:
            policy = self.topology.pipelines[pipeline].on_error
            if policy is None and stream is not None:
                policy = self.topology.streams[stream].on_error
            policy = policy or FAIL
            writer = None
            if policy.kind == "dead_letter" and policy.dead_letter:
                writer = self._writer(self.topology.streams[policy.dead_letter])
            self._handlers[key] = ErrorHandler(self.topology.name, pipeline, policy, writer,
                                               self.outputs, self.stats)
        return self._handlers[key]

    @staticmethod
    def _writer(spec: StreamSpec) -> TopicWriter:
        return TopicWriter(spec.topic, spec.partitions, make_serde(spec.key), make_serde(spec.value))

    def _source(self, node: Node) -> Source:
        key_spec, value_spec = node.serdes
        return Source(node.id, node.topics[0], make_serde(key_spec).decode, make_serde(value_spec).decode,
                      self._handler(node.pipeline, node.stream), self._step(node.children), node.pos)

    def _step(self, children: list[str]) -> Step | None:
        if not children:
            return None
        node_id, = children
        step = self._steps.get(node_id)
        if step is not None:  # a merge point reached from several sources
            return step
        node = self.dag.nodes[node_id]
        ctx = self._ctx(node.pipeline)
        step = self._steps[node_id] = Step(node.id, node.label, node.pos, self._handler(node.pipeline, None))
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
        else:
            op = get_operator(node.step.op)
            if op is None:
                raise ProcessingError(f"{node.pos}: unknown operator {node.step.op!r}")
            step.proc = op.build(node.step, ctx)
            step.label = step.proc.label
        step.next = self._step(node.children)
        return step

    # -- running ----------------------------------------------------------------------------

    def process(self, records: list[Record]) -> None:
        """Runs one partition's records (in offset order) through every pipeline reading
        their topic; outputs accumulate in ``self.outputs``."""
        for source in self.sources.get(records[0].topic, ()):
            events = self._decode(source, records)
            if events and source.next is not None:
                self._push(source.next, events)

    def _decode(self, source: Source, records: list[Record]) -> list[Event]:
        kd, vd = source.decode_key, source.decode_value
        try:
            return [Event(kd(r.key), vd(r.value), r.timestamp_ms, r.headers, r) for r in records]
        except Exception:
            pass
        events = []
        for r in records:
            try:
                events.append(Event(kd(r.key), vd(r.value), r.timestamp_ms, r.headers, r))
            except Exception as exc:
                source.handler.handle(r, f"{source.id} (decode)", source.pos, exc)
        return events

    def _push(self, step: Step | None, batch: list[Event]) -> None:
        while step is not None and batch:
            if step.arms:
                for arm, part in zip(step.arms, self._split(step, batch)):
                    if arm is not None and part:
                        self._push(arm, part)
                return
            proc = step.proc
            try:
                batch = proc.process(batch)
            except Exception:
                batch = self._one_by_one(step, batch)
            step = step.next

    @staticmethod
    def _one_by_one(step: Step, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        proc = step.proc
        for e in batch:
            try:
                out.extend(proc.process_one(e))
            except Exception as exc:
                step.handler.handle(e.origin, f"{step.id} ({step.label})", step.pos, exc)
        return out

    @staticmethod
    def _arm(whens: list[ExprFn | None], e: Event) -> int | None:
        for i, f in enumerate(whens):
            if f is None or f(e.key, e.value, e):
                return i
        return None

    @staticmethod
    def _arm_checked(step: Step, e: Event) -> int | None:
        """``_arm`` with the error policy applied to the ``when`` that raised (the event then
        goes to no arm)."""
        for i, f in enumerate(step.whens):
            try:
                if f is None or f(e.key, e.value, e):
                    return i
            except Exception as exc:
                step.handler.handle(e.origin, f"{step.id}[{i}] (when)", step.when_pos[i], exc)
                return None
        return None

    def _split(self, step: Step, batch: list[Event]) -> list[list[Event]]:
        """First match wins; an event no arm matches is dropped (like a filter)."""
        parts: list[list[Event]] = [[] for _ in step.arms]
        whens, arm_of = step.whens, self._arm
        try:
            arms = [arm_of(whens, e) for e in batch]
        except Exception:
            arms = [self._arm_checked(step, e) for e in batch]
        for i, e in zip(arms, batch):
            if i is not None:
                parts[i].append(e)
        return parts


def _resolve_functions(topology: Topology) -> dict[str, Callable[..., Any]]:
    if not topology.functions:
        return {}
    from edm_runner.spec.functions import resolve_function

    return {name: resolve_function(f.python, topology.base_dir) for name, f in topology.functions.items()}
