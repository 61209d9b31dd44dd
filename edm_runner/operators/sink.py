"""Writing events to a topic: encoding with the target's serdes and choosing partitions; the
sinks the DAG places (a pipeline's ``to``, ``group_by``) and ``repartition`` use it.

Invariants: the partition is always chosen here (never by the broker), with the same
murmur2 mapping as Kafka's Java client for non-null keys; null keys go round robin over the
partitions in event order, so a run is deterministic. Output timestamp and headers are the
input event's. No record above ``MAX_RECORD_BYTES`` is returned: its event gets a
``RecordTooLargeError``; no record whose timestamp is outside its topic's ``TimestampBound``
(``TimestampBounds``, read from the broker at start; Kafka's default unless it reports another)
is returned: its event gets a ``RecordTimestampError``. Both on every broker, before the broker
could refuse the batch.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from edm_runner.errors import EventError
from edm_runner.operators.api import Event, ExprFn, Processor
from edm_runner.records import (DEFAULT_TIMESTAMP_BOUND, MAX_RECORD_BYTES, OutRecord, TimestampBound,
                                check_record_size, check_record_timestamp, wall_clock_ms)
from edm_runner.records.partitioner import DefaultPartitioner
from edm_runner.serde import Serde
from edm_runner.language.model import Pos, ToSpec

# (key, key_bytes, value) -> partition
Partitioner = Callable[[Any, "bytes | None", Any], int]
# topic -> its record timestamp bound (``Broker.timestamp_bounds``); absent: the default
TimestampBounds = Mapping[str, TimestampBound]


class TimestampGate:
    """Checks the timestamps of the records of one batch for one topic against its bound at
    the time the gate is made (one clock read per batch)."""

    __slots__ = ("what", "bound", "now", "lo", "hi")

    def __init__(self, topic: str, bounds: TimestampBounds) -> None:
        self.what = f"a record for '{topic}'"
        self.bound = bound = bounds.get(topic, DEFAULT_TIMESTAMP_BOUND)
        self.now = now = wall_clock_ms()
        self.lo = -sys.maxsize if bound.before_ms is None else now - bound.before_ms
        self.hi = sys.maxsize if bound.after_ms is None else now + bound.after_ms

    def check(self, timestamp_ms: int) -> None:
        if not self.lo <= timestamp_ms <= self.hi:
            check_record_timestamp(self.what, timestamp_ms, self.bound, self.now)


class FunctionPartitioner:
    """A declared function ``fn(key, value, num_partitions) -> int``; the result is checked."""

    def __init__(self, name: str, fn: Callable[[Any, Any, int], int], partitions: int) -> None:
        self.name = name
        self.fn = fn
        self.partitions = partitions

    def __call__(self, key: Any, key_bytes: bytes | None, value: Any) -> int:
        p = self.fn(key, value, self.partitions)
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < self.partitions:
            raise EventError(f"partitioner function {self.name!r} returned {p!r}; "
                             f"it must return an int in [0, {self.partitions})")
        return p


class TopicWriter:
    """Turns events into ``OutRecord``s for one topic. ``bounds`` is shared with the runtime,
    which fills it when the service starts (``Broker.timestamp_bounds``)."""

    def __init__(self, topic: str, partitions: int, key_serde: Serde, value_serde: Serde,
                 partitioner: Partitioner | None = None, bounds: TimestampBounds | None = None) -> None:
        self.topic = topic
        self.partitions = partitions
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.partitioner = partitioner or DefaultPartitioner(partitions)
        self.bounds: TimestampBounds = {} if bounds is None else bounds

    def gate(self) -> TimestampGate:
        """The timestamp check for one batch of this topic."""
        return TimestampGate(self.topic, self.bounds)

    def records(self, batch: list[Event]) -> list[OutRecord]:
        topic, part = self.topic, self.partitioner
        ke, ve = self.key_serde.encode, self.value_serde.encode
        out = []
        append = out.append
        limit = MAX_RECORD_BYTES
        gate = self.gate()
        lo, hi = gate.lo, gate.hi
        for e in batch:
            if not lo <= e.timestamp <= hi:
                gate.check(e.timestamp)
            kb = ke(e.key)
            value = e.value
            vb = ve(value)
            if e.headers or (len(vb) if vb else 0) + (len(kb) if kb else 0) > limit:
                check_record_size(f"a record for '{topic}'", kb, vb, e.headers)
            append(OutRecord(topic, part(e.key, kb, value), kb, vb, e.timestamp, e.headers))
        return out

    def record(self, e: Event) -> OutRecord:
        self.gate().check(e.timestamp)
        kb = self.key_serde.encode(e.key)
        vb = self.value_serde.encode(e.value)
        check_record_size(f"a record for '{self.topic}'", kb, vb, e.headers)
        return OutRecord(self.topic, self.partitioner(e.key, kb, e.value), kb, vb, e.timestamp, e.headers)


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
            raise EventError(f"`select` returned {name!r}; it must be one of {', '.join(self.writers)}")
        return writer

    def process(self, batch: list[Event]) -> list[Event]:
        if self.only is not None:
            self.outputs.extend(self.only.records(batch))
            return []
        f = self.select
        writers = [self._writer(f(e.key, e.value, e)) for e in batch]
        self.outputs.extend([w.record(e) for w, e in zip(writers, batch)])
        return []


class GroupBySink(Processor):
    """``group_by``: re-keys with ``key`` and writes to its internal repartition topic with the
    topic's serdes (``graph.dag.InternalTopic``) and the default partitioner. After a table
    (``changes``) the value is ``{"old": o, "new": n}`` and a change that moves a key between
    groups becomes two records: the old value leaving its group, the new one entering the other."""

    label = "group_by"

    def __init__(self, key_fn: ExprFn, writer: TopicWriter, outputs: list[OutRecord],
                 changes: bool, pos: Pos) -> None:
        self.key_fn = key_fn
        self.topic = writer.topic
        self.encode_key = writer.key_serde.encode
        self.encode_value = writer.value_serde.encode
        self.partitioner = writer.partitioner
        self.writer = writer
        self.outputs = outputs
        self.changes = changes
        self.pos = pos

    def _record(self, key: Any, value: Any, e: Event) -> OutRecord:
        kb = self.encode_key(key)
        vb = self.encode_value(value)
        if e.headers or (len(vb) if vb else 0) + (len(kb) if kb else 0) > MAX_RECORD_BYTES:
            check_record_size(f"a record for '{self.topic}'", kb, vb, e.headers)
        return OutRecord(self.topic, self.partitioner(key, kb, value), kb, vb, e.timestamp, e.headers)

    def process(self, batch: list[Event]) -> list[Event]:
        gate = self.writer.gate()
        for e in batch:
            gate.check(e.timestamp)
        f = self.key_fn
        if not self.changes:
            keys = [f(e.key, e.value, e) for e in batch]
            self.outputs.extend([self._record(k, e.value, e) for k, e in zip(keys, batch)])
            return []
        records = []
        for e in batch:
            new_key = f(e.key, e.value, e) if e.value is not None else None
            old_key = f(e.key, e.old, e) if e.old is not None else None
            if e.value is not None and e.old is not None and new_key == old_key:
                records.append(self._record(new_key, {"old": e.old, "new": e.value}, e))
                continue
            if e.old is not None:
                records.append(self._record(old_key, {"old": e.old, "new": None}, e))
            if e.value is not None:
                records.append(self._record(new_key, {"old": None, "new": e.value}, e))
        self.outputs.extend(records)
        return []
