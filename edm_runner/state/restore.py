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
        log.warning("the checkpoint of store %r at %s is at offset %d but %s[%d] ends at %d: "
                    "the topic was recreated; wiping the store and restoring it from offset 0",
                    store, state.path, from_offset, tp.topic, tp.partition, end_offset)
        state.wipe_store(store, changelog_tps=() if source else (tp,), forget_inputs=True)
        from_offset = 0
    result = RestoreResult(0)
    if from_offset >= end_offset:
        return result
    await _isolate(consumer, tp, from_offset)
    with _gc_pause:
        await _copy(state, store, consumer, tp, end_offset, from_offset, progress, convert, source,
                    batch_size, before_apply, result)
    return result


async def _copy(state: TaskState, store: str, consumer: Consumer, tp: TopicPartition, end_offset: int,
                from_offset: int, progress: RestoreProgress | None, convert: Convert | None, source: bool,
                batch_size: int, before_apply: Callable[[], Awaitable[None]] | None,
                result: RestoreResult) -> None:
    """``restore_task``'s loop: applies ``[from_offset, end_offset)`` of ``tp``."""
    position = from_offset
    stalled_since = time.monotonic()
    skipped_null_keys = 0
    # The LMDB write of a batch (a thread) overlaps the fetch of the next one; writes stay
    # in log order because a batch is written only after the previous write finished.
    writing: asyncio.Future[None] | None = None
    try:
        while position < end_offset:
            records = (await consumer.getmany(timeout_ms=POLL_MS, max_records=batch_size)).get(tp)
            if not records:
                if await consumer.position(tp) >= end_offset:
                    # Only transaction markers were left below the end: they take offsets but
                    # never arrive as records (exactly-once changelogs and sources).
                    if writing is not None:
                        await writing
                        writing = None
                    await asyncio.to_thread(
                        state.apply_changelog, store, [], changelog=None if source else {tp: end_offset},
                        inputs_at_least={tp: end_offset} if source else None)
                    break
                # Nothing below the end (e.g. the topic was truncated meanwhile): stop there.
                current_end = (await consumer.end_offsets([tp]))[tp]
                if current_end <= position:
                    break
                if time.monotonic() - stalled_since > STALL_S:
                    raise BrokerError(f"restoring store {store!r} from {tp.topic}[{tp.partition}] "
                                      f"made no progress for {STALL_S:.0f} s at offset {position} "
                                      f"(end {end_offset}); check the broker's health")
                continue
            stalled_since = time.monotonic()
            new_position = min(records[-1].offset + 1, end_offset)
            if records[-1].offset >= end_offset:
                records = [r for r in records if r.offset < end_offset]
            if convert is None:
                check_changelog(state, store, tp, records)
                entries = [(r.key, r.value) for r in records if r.key is not None]
                skipped_null_keys += len(records) - len(entries)
            else:
                entries = [kv for r in records if (kv := convert(r)) is not None]
            headers = None if source else input_position(records)
            if headers:
                result.input_position = headers
            if before_apply is not None:
                await before_apply()
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(
                state.apply_changelog, store, entries,  # type: ignore[arg-type]
                changelog=None if source else {tp: new_position},
                inputs_at_least={tp: new_position} if source else headers))
            result.records_read += len(entries)
            if progress is not None:
                progress.advance(new_position - position)
            position = new_position
    finally:
        if writing is not None:
            await writing
    if skipped_null_keys:
        log.warning("skipped %d records without a key while restoring store %r from %s[%d]",
                    skipped_null_keys, store, tp.topic, tp.partition)
