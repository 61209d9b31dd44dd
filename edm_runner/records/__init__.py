"""Records: what the brokers read and write and the operators emit, how large one may be, and
(``records.partitioner``) which partition a key goes to. A leaf of the house: it imports only
``edm_runner.errors``, so the operators (which know no broker) and the brokers share it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

from edm_runner.errors import EventError

Headers = tuple[tuple[str, bytes], ...]

MAX_RECORD_BYTES = 1_000_000
"""The largest record edm writes, on every broker: its key, value and header bytes together.
Kafka refuses a record batch above the topic's max.message.bytes (1 MiB + 12 by default) and
aiokafka's producer a request above max_request_size (1 MiB by default, edm keeps it); a record
alone in its batch adds under 100 bytes of framing. The embedded broker applies the same limit,
so a topology that runs on it runs on Kafka."""


class RecordTooLargeError(EventError):
    """A record to write is larger than ``MAX_RECORD_BYTES``: an error of its event (it follows
    ``on_error``), found before anything of the event is written."""


def check_record_size(what: str, key: bytes | None, value: bytes | None, headers: Headers = (),
                      hint: str = "keep less per event, e.g. bound what an aggregate accumulates") -> None:
    """Raises ``RecordTooLargeError`` when the record is larger than ``MAX_RECORD_BYTES``. The one
    place that limit is applied: the stream writers (``group_by`` too), the store changelogs,
    ``edm produce`` and HTTP ingestion. ``what`` names the record's destination in the message
    ("a record for 'topic'"), ``hint`` says what to do."""
    size = (len(key) if key else 0) + (len(value) if value else 0)
    if headers:
        size += sum(len(k) + len(v) for k, v in headers)
    if size > MAX_RECORD_BYTES:
        parts = f"key {len(key) if key else 0}, value {len(value) if value else 0}"
        if headers:
            parts += f", headers {sum(len(k) + len(v) for k, v in headers)}"
        raise RecordTooLargeError(
            f"{what} is {size} bytes ({parts}), above the record size limit of {MAX_RECORD_BYTES} "
            f"bytes (Kafka's default max.message.bytes is 1 MiB); {hint}")


KAFKA_TIMESTAMP_AFTER_MAX_MS = 3_600_000
"""Kafka's default ``message.timestamp.after.max.ms`` (KIP-937, Kafka 3.6+)."""


@dataclass(frozen=True, slots=True)
class TimestampBound:
    """How far from the broker's clock a record timestamp may be when written to a topic:
    Kafka refuses a whole batch holding one above now + ``after_ms`` or below now - ``before_ms``
    (the topic's ``message.timestamp.after.max.ms`` / ``message.timestamp.before.max.ms``,
    KIP-937). None: no bound (``before`` by default; both on LogAppendTime topics, whose
    timestamps the broker sets). Unless a broker reports a topic's bound, Kafka's default applies
    (the embedded broker too), so a topology that runs on it runs on Kafka."""

    after_ms: int | None = KAFKA_TIMESTAMP_AFTER_MAX_MS
    before_ms: int | None = None


DEFAULT_TIMESTAMP_BOUND = TimestampBound()


class RecordTimestampError(EventError):
    """A record to write has a timestamp outside its topic's ``TimestampBound``: an error of its
    event (it follows ``on_error``), found before anything of the batch is written."""


def check_record_timestamp(what: str, timestamp_ms: int, bound: TimestampBound, now_ms: int) -> None:
    """Raises ``RecordTimestampError`` when ``timestamp_ms`` is outside ``bound`` at ``now_ms``
    (this machine's clock, standing in for the broker's). The one place that bound is applied:
    the stream writers (``operators.sink.TopicWriter``: to, group_by, repartition).
    ``what`` names the record's destination ("a record for 'topic'")."""
    after, before = bound.after_ms, bound.before_ms
    if after is not None and timestamp_ms > now_ms + after:
        raise RecordTimestampError(
            f"{what} has timestamp {timestamp_ms} ms, {timestamp_ms - now_ms} ms ahead of the clock "
            f"({now_ms}), past the topic's message.timestamp.after.max.ms of {after} ms: Kafka refuses "
            "it. Fix the event time (a `time:` expression in the wrong unit, a producer's clock), or "
            "raise message.timestamp.after.max.ms on the topic")
    if before is not None and timestamp_ms < now_ms - before:
        raise RecordTimestampError(
            f"{what} has timestamp {timestamp_ms} ms, {now_ms - timestamp_ms} ms behind the clock "
            f"({now_ms}), past the topic's message.timestamp.before.max.ms of {before} ms: Kafka "
            "refuses it. Fix the event time, or raise message.timestamp.before.max.ms on the topic")


_WALL_CLOCK: ContextVar[Callable[[], int] | None] = ContextVar("edm_wall_clock", default=None)


def wall_clock_ms() -> int:
    """This machine's clock in ms since the epoch, standing in for the broker's (the record
    timestamp bounds); inside ``wall_clock`` the clock it installs (the test driver's)."""
    clock = _WALL_CLOCK.get()
    return time.time_ns() // 1_000_000 if clock is None else clock()


@contextmanager
def wall_clock(clock: Callable[[], int]) -> Iterator[None]:
    """Makes ``wall_clock_ms`` read ``clock`` in this context (``edm test`` advances it
    explicitly), and the real clock again after."""
    token = _WALL_CLOCK.set(clock)
    try:
        yield
    finally:
        _WALL_CLOCK.reset(token)


@dataclass(slots=True)
class Record:
    """A record as read from a broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()


@dataclass(slots=True)
class OutRecord:
    """A record to write; ``partition`` is always decided by the caller."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()
