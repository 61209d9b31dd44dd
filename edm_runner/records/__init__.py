"""Records: what the brokers read and write and the operators emit, how large one may be, and
(``records.partitioner``) which partition a key goes to. A leaf of the house: it imports only
``edm_runner.errors``, so the operators (which know no broker) and the brokers share it.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def check_record_size(what: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> None:
    """Raises ``RecordTooLargeError`` when the record is larger than ``MAX_RECORD_BYTES``. The one
    place that limit is applied: the stream writers, the store changelogs and ``edm produce``.
    ``what`` names the record's destination in the message ("a record for 'topic'")."""
    size = (len(key) if key else 0) + (len(value) if value else 0)
    if headers:
        size += sum(len(k) + len(v) for k, v in headers)
    if size > MAX_RECORD_BYTES:
        parts = f"key {len(key) if key else 0}, value {len(value) if value else 0}"
        if headers:
            parts += f", headers {sum(len(k) + len(v) for k, v in headers)}"
        raise RecordTooLargeError(
            f"{what} is {size} bytes ({parts}), above the record size limit of {MAX_RECORD_BYTES} "
            "bytes (Kafka's default max.message.bytes is 1 MiB); keep less per event, e.g. bound "
            "what an aggregate accumulates")


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
