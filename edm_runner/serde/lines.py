"""The JSON lines that `edm produce` reads: ``{"key", "value", "headers", "timestamp"}`` per
line (or the value alone), the very lines `edm consume` prints, plus the ``topic``,
``partition`` and ``offset`` it adds. Bytes are read back by ``serde.printable.from_json``,
the inverse of what `edm consume` prints, so ``edm consume ... | edm produce ...`` writes the
same bytes again."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterable

from edm_runner.errors import EdmError, EventError
from edm_runner.serde.core import Serde, make_serde
from edm_runner.serde.printable import from_json, header_from_json
from edm_runner.serde.spec import SerdeSpec

__all__ = ["Line", "parse_lines", "plain_serdes"]

# What `edm consume` prints besides the record, so its output can be produced again.
CONSUMED_FIELDS = frozenset({"topic", "partition", "offset"})


@dataclass(frozen=True)
class Line:
    """One input line, encoded in its stream's formats."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


# What `edm produce` and `consume` use for a topic no topology declares.
STRING_KEYS, JSON_VALUES = SerdeSpec("string"), SerdeSpec("json")


def plain_serdes(key: SerdeSpec = STRING_KEYS, value: SerdeSpec = JSON_VALUES) -> tuple[Serde, Serde]:
    """Key and value serdes of a stream's formats (``key``, ``value``: its declared serdes; by
    default string keys and JSON values) without schema validation: tools must be able to write
    and read invalid events, for example to exercise dead letters. A null key is still refused
    on an entity stream (``key.keyed``): no broker can keep such a record (Kafka refuses it)."""
    return make_serde(replace(key, schema=None)), make_serde(replace(value, schema=None))


def parse_lines(source: BinaryIO | Iterable[bytes], origin: str, raw_values: bool, key_serde: Serde,
                value_serde: Serde) -> list[Line]:
    """Encode each JSON line of the binary stream ``source``; any problem is an ``EdmError``
    at ``origin:line:col``. ``raw_values``: each line is the value itself. A line without a
    timestamp gets the time of the call. A record larger than the brokers take is refused here
    too."""
    from edm_runner.records import check_record_size
    now = int(time.time() * 1000)
    records = []
    for number, raw in enumerate(source, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise EdmError(f"{origin}:{number}:{error.start + 1}: not UTF-8 text; "
                           "write raw bytes as {\"base64\": ...}") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise EdmError(f"{origin}:{number}:{error.colno}: not valid JSON: {error.msg}") from None
        if raw_values:
            item = {"value": item}
        elif not isinstance(item, dict) or not set(item) <= {"key", "value", "headers", "timestamp",
                                                             *CONSUMED_FIELDS} or "value" not in item:
            raise EdmError(f"{origin}:{number}:1: expected an object with \"value\" and optionally \"key\", "
                           "\"headers\", \"timestamp\" (the lines `edm consume` prints); use --raw-values "
                           "if each line is the value itself")
        timestamp = item.get("timestamp", now)
        if type(timestamp) is not int or not 0 <= timestamp < 2 ** 63:  # Kafka's int64
            raise EdmError(f"{origin}:{number}:1: \"timestamp\" must be milliseconds since the epoch "
                           f"(an integer), not {json.dumps(timestamp, ensure_ascii=False)}")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict):
            raise EdmError(f"{origin}:{number}:1: \"headers\" must be an object of names to values")
        try:
            record = Line(from_json(item.get("key"), key_serde), from_json(item["value"], value_serde),
                          tuple((k, header_from_json(v)) for k, v in headers.items()), timestamp)
            check_record_size("the record", record.key, record.value, record.headers)
        except EventError as error:  # SerdeError, RecordTooLargeError
            raise EdmError(f"{origin}:{number}:1: {error}") from None
        records.append(record)
    return records
