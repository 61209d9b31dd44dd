"""Restoring a store from its changelog (or a table from its source topic).

Invariants:
- Records are applied byte for byte (or through ``convert`` for a source topic), in log
  order, in batches: one LMDB transaction per batch that also advances the checkpoint, so
  an interrupted restore resumes where it stopped.
- Only offsets in ``[from_offset, end_offset)`` are applied; ``end_offset`` is captured by
  the caller when restore starts (records appended later are the task's to process).
- A checkpoint ahead of the end offset means the changelog was recreated: the store is
  wiped (with a warning) and restored from offset 0.
- Every changelog record names the definition of the store that wrote it (``STORE_HEADER``,
  its fingerprint: per record, so compaction cannot drop it), and each store's last record
  of a batch carries the definition itself (``DEFINITION_HEADER``). A record of another
  definition is refused before anything of its batch is applied (``check_changelog``), so a
  machine without local state refuses an incompatible store change exactly as one with it.
  Records without the header (written before it existed) are accepted.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from edm_runner import faults
from edm_runner.brokers.base import Consumer, Headers, Record, TopicPartition
from edm_runner.errors import BrokerError
from edm_runner.state.progress import RestoreProgress
from edm_runner.state.task import TaskState, parse_offsets

log = logging.getLogger("edm.state")

INPUT_HEADER = "edm.input"
STORE_HEADER = "edm.store"
DEFINITION_HEADER = "edm.store.definition"
RESTORE_BATCH = 50_000
POLL_MS = 500
STALL_S = 120.0

Convert = Callable[[Record], "tuple[bytes, bytes | None] | None"]


@dataclass
class RestoreResult:
    """``records_read``: changelog records applied. ``input_position``: the inputs' next
    offsets from the last ``edm.input`` header applied ({} when none was)."""

    records_read: int
    input_position: dict[TopicPartition, int] = field(default_factory=dict)


def input_position(records: list[Record]) -> dict[TopicPartition, int] | None:
    """The ``edm.input`` header of the last record carrying one, decoded (edm writes it as
    the last header of its record: one test per record, restores read millions)."""
    for r in reversed(records):
        h = r.headers
        if h and h[-1][0] == INPUT_HEADER:
            value = h[-1][1]
            try:
                return parse_offsets(json.loads(value))
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring a malformed %s header at %s[%d]@%d: %r", INPUT_HEADER,
                            r.topic, r.partition, r.offset, value[:100])
    return None


def store_headers(definition: Mapping[str, Any]) -> tuple[Headers, Headers]:
    """The headers of a changelog record of a store of ``definition`` (``{"type", "params",
    "fingerprint"}``): (every record's, the store's last record of a batch)."""
    every = ((STORE_HEADER, definition["fingerprint"].encode()),)
    described = json.dumps({"type": definition["type"], "params": definition["params"]}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return every, every + ((DEFINITION_HEADER, described.encode()),)


def check_changelog(state: TaskState, store: str, tp: TopicPartition, records: list[Record]) -> None:
    """Raises ``IncompatibleStoreError`` when a record of ``records`` (read from ``tp``, the
    changelog of ``store``) was written by another definition of the store."""
    definition = state.definition(store)
    expected = definition["fingerprint"].encode()
    for r in records:
        h = r.headers
        if h and h[0][0] == STORE_HEADER and h[0][1] != expected:
            found = h[0][1]
            old: dict[str, Any] = {"fingerprint": found.decode("utf-8", "replace")}
            for other in records:  # the definition, when a record of this batch carries it
                if other.headers and other.headers[0] == h[0]:
                    described = dict(other.headers).get(DEFINITION_HEADER)
                    if described is not None:
                        try:
                            old.update(json.loads(described))
                        except ValueError:
                            pass
                        break
            raise state.incompatible(store, definition, old, f"its changelog {tp.topic} (partition "
                                     f"{tp.partition}, offset {r.offset})")


async def _isolate(consumer: Consumer, tp: TopicPartition, offset: int) -> None:
    """Make ``consumer`` read ``tp`` only, from ``offset``: a group-less consumer holds every
    partition of its topics, the others are moved to their end."""
    if tp not in consumer.assignment():
        raise BrokerError(f"cannot restore from {tp.topic}[{tp.partition}]: the restore consumer "
                          "does not hold that partition; does the topic have enough partitions?")
    others = [p for p in consumer.assignment() if p != tp]
    if others:
        for p, end in (await consumer.end_offsets(others)).items():
            consumer.seek(p, end)
    consumer.seek(tp, offset)


class _GcPause:
    """Pauses Python's cyclic garbage collector while at least one restore runs. A restore
    allocates a few objects per record (millions, none in cycles); each full collection
    walks the whole heap, and they made up about half of a restore's time (bench
    kafka-restore: 6.3 s -> 3.5 s for 1,000,000 records). Restores may overlap (two tasks at
    a time): the collector is back on when the last one ends."""

    def __init__(self) -> None:
        self.active = 0
        self.disabled = False

    def __enter__(self) -> None:
        if self.active == 0 and gc.isenabled():
            gc.disable()
            self.disabled = True
        self.active += 1

    def __exit__(self, *exc: object) -> None:
        self.active -= 1
        if self.active == 0 and self.disabled:
            self.disabled = False
            gc.enable()


_gc_pause = _GcPause()


async def restore_task(state: TaskState, store: str, consumer: Consumer, tp: TopicPartition,
                       end_offset: int, *, from_offset: int,
                       progress: RestoreProgress | None = None, convert: Convert | None = None,
                       source: bool = False, batch_size: int = RESTORE_BATCH,
                       before_apply: Callable[[], Awaitable[None]] | None = None) -> RestoreResult:
    """Restore ``store`` of ``state`` from ``tp`` (read with ``consumer``, a started
    group-less consumer this call seeks as it needs) from ``from_offset`` up to
    ``end_offset`` (exclusive).

    A changelog (``source`` False) advances ``checkpoint().changelogs[tp]`` and raises the
    checkpoint's input offsets to the last ``edm.input`` header. A table's source topic
    (``source`` True; end = the group's committed offset) advances
    ``checkpoint().inputs[tp]`` instead. ``convert`` turns a source record into store
    (key, value) bytes, or None to skip it; without it records are copied as they are.
    ``before_apply`` is awaited after each batch is converted, before it is applied (what
    ``convert`` queued, e.g. dead letters, is made durable before the checkpoint passes it).
    """
    if from_offset > end_offset:
        from_offset = _wipe_recreated(state, store, tp, from_offset, end_offset, source)
    result = RestoreResult(0)
    if from_offset >= end_offset:
        return result
    await _isolate(consumer, tp, from_offset)
    copy = _Copy(state, store, consumer, tp, from_offset, end_offset, result, progress=progress, convert=convert,
                 source=source, batch_size=batch_size, before_apply=before_apply)
    with _gc_pause:
        await copy.run()
    return result


def _wipe_recreated(state: TaskState, store: str, tp: TopicPartition, from_offset: int, end_offset: int,
                    source: bool) -> int:
    """The checkpoint is past the end of ``tp``: the topic was recreated. Wipes the store (and
    its checkpoint) and returns the offset to restore from, 0."""
    log.warning("the checkpoint of store %r at %s is at offset %d but %s[%d] ends at %d: "
                "the topic was recreated; wiping the store and restoring it from offset 0",
                store, state.path, from_offset, tp.topic, tp.partition, end_offset)
    state.wipe_store(store, changelog_tps=() if source else (tp,), forget_inputs=True)
    return 0


class _Copy:
    """``restore_task``'s copy of ``[position, end)`` of ``tp`` into ``store``, batch by batch.

    Invariants: the loop has one exit, ``position`` reaching ``end``: a batch advances
    ``position``; transaction markers alone below the end move it to the end; a topic shrunk
    below ``position`` meanwhile brings ``end`` down to it. LMDB writes run in a thread and
    overlap the next fetch, in log order: a batch is written only after the previous write
    finished, and ``run`` returns only when the last one has.
    """

    def __init__(self, state: TaskState, store: str, consumer: Consumer, tp: TopicPartition, position: int,
                 end: int, result: RestoreResult, *, progress: RestoreProgress | None, convert: Convert | None,
                 source: bool, batch_size: int, before_apply: Callable[[], Awaitable[None]] | None) -> None:
        self.state = state
        self.store = store
        self.consumer = consumer
        self.tp = tp
        self.position = position
        self.end = end
        self.result = result
        self.progress = progress
        self.convert = convert
        self.source = source
        self.batch_size = batch_size
        self.before_apply = before_apply
        self.skipped_null_keys = 0
        self.last_progress = time.monotonic()
        self.writing: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            while self.position < self.end:
                records = (await self.consumer.getmany(timeout_ms=POLL_MS, max_records=self.batch_size)).get(self.tp)
                if records:
                    await self._apply(records)
                else:
                    await self._nothing_fetched()
        finally:
            await self._written()
        if self.skipped_null_keys:
            log.warning("skipped %d records without a key while restoring store %r from %s[%d]",
                        self.skipped_null_keys, self.store, self.tp.topic, self.tp.partition)

    async def _apply(self, records: list[Record]) -> None:
        """Writes the records of ``records`` below ``end`` and moves ``position`` past them."""
        self.last_progress = time.monotonic()
        position = min(records[-1].offset + 1, self.end)
        if records[-1].offset >= self.end:
            records = [r for r in records if r.offset < self.end]
        entries = self._entries(records)
        inputs = None if self.source else input_position(records)
        if inputs:
            self.result.input_position = inputs
        if self.before_apply is not None:
            await self.before_apply()
        await faults.held("restore")
        await self._write(entries, position, inputs)
        self.result.records_read += len(entries)
        if self.progress is not None:
            self.progress.advance(position - self.position)
        self.position = position

    def _entries(self, records: list[Record]) -> list[tuple[bytes, bytes | None]]:
        """The store's (key, value) bytes of ``records``: a changelog's as they are (checked to
        be of this store's definition; records without a key skipped), a source's converted."""
        if self.convert is not None:
            return [kv for r in records if (kv := self.convert(r)) is not None]
        check_changelog(self.state, self.store, self.tp, records)
        entries = [(r.key, r.value) for r in records if r.key is not None]
        self.skipped_null_keys += len(records) - len(entries)
        return entries  # type: ignore[return-value]

    async def _nothing_fetched(self) -> None:
        """No record within a poll. Only transaction markers may be left below the end (they take
        offsets but never arrive as records: exactly-once changelogs and sources): the checkpoint
        moves to the end. The topic may have been truncated below ``position`` meanwhile: the
        end comes down to it. Otherwise the broker is slow: an error once no record came for
        ``STALL_S``."""
        if await self.consumer.position(self.tp) >= self.end:
            await self._write([], self.end, None)
            self.position = self.end
            return
        current_end = (await self.consumer.end_offsets([self.tp]))[self.tp]
        if current_end <= self.position:
            self.end = self.position
            return
        if time.monotonic() - self.last_progress > STALL_S:
            raise BrokerError(f"restoring store {self.store!r} from {self.tp.topic}[{self.tp.partition}] "
                              f"made no progress for {STALL_S:.0f} s at offset {self.position} "
                              f"(end {self.end}); check the broker's health")

    async def _write(self, entries: list[tuple[bytes, bytes | None]], position: int,
                     inputs: dict[TopicPartition, int] | None) -> None:
        """Starts writing ``entries`` with the checkpoint at ``position`` (a changelog's offset, or
        a source's input offset; ``inputs``: a changelog's ``edm.input`` position), once the
        previous write has finished."""
        await self._written()
        self.writing = asyncio.ensure_future(asyncio.to_thread(
            self.state.apply_changelog, self.store, entries,
            changelog=None if self.source else {self.tp: position},
            inputs_at_least={self.tp: position} if self.source else inputs))

    async def _written(self) -> None:
        writing, self.writing = self.writing, None
        if writing is not None:
            await writing
