"""Serde construction.

Invariants:
- ``None`` is never encoded or decoded: it stays ``None`` both ways (a null key, or a
  tombstone value on an entity stream). A schema is applied to ``None`` too, except to the
  tombstones of an entity stream (``SerdeSpec.tombstones``). The key of an entity stream
  refuses ``None`` when encoding (``SerdeSpec.keyed``).
- Every failure is a ``SerdeError`` whose message says what was expected and what came.
- A schema file is read and its validator compiled once per ``make_serde`` call.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jsonschema

from edm_runner.errors import EventError
from edm_runner.serde.spec import SerdeSpec


class SerdeError(EventError):
    """A key or value cannot be encoded or decoded in its declared format or schema (per
    event: the ``on_error`` policy applies; at start-up, e.g. an unreadable schema file, a
    user-facing error like any ``EdmError``)."""


Encoder = Callable[[Any], "bytes | None"]
Decoder = Callable[["bytes | None"], Any]


@dataclass(frozen=True)
class Serde:
    """``encode(obj) -> bytes | None`` and ``decode(bytes | None) -> obj`` for one format."""

    format: str
    encode: Encoder
    decode: Decoder


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The C encoder and scanner called directly: the same output as json.dumps(obj,
# separators=(",", ":"), ensure_ascii=False, allow_nan=False) and json.loads, without their
# per-call Python overhead (about half the cost for small events).
_json_chunks = json.encoder.c_make_encoder(None, _not_serializable, json.encoder.encode_basestring,
                                           None, ":", ",", False, False, False)
_encode_str = json.encoder.encode_basestring
_strict = json.JSONDecoder(parse_constant=_no_constant)  # NaN and Infinity are not JSON
_json_scan = _strict.scan_once
_json_decode = _strict.decode
_raw_decode = _strict.raw_decode
_INT_START = frozenset(b"-0123456789")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def encode_json(obj: Any) -> bytes:
    """THE JSON encoding of edm: event keys and values of `json` streams, and store and
    changelog bytes alike. Compact, UTF-8, key order kept, no NaN or Infinity (not JSON).
    ``None`` is ``null`` here (the stream serde maps None to no bytes before calling this).
    str and int take a fast path with the same output (keys and counts of every store access).
    Raises ``SerdeError`` for what JSON cannot hold."""
    try:
        kind = type(obj)
        if kind is str:
            return _encode_str(obj).encode()
        if kind is int:
            return repr(obj).encode()
        return "".join(_json_chunks(obj, 0)).encode()
    except (TypeError, ValueError) as exc:
        raise SerdeError(f"cannot encode {_preview(obj)} as JSON: {exc}") from None
    except RecursionError:
        raise SerdeError(f"cannot encode {type(obj).__name__} as JSON: it is cyclic or too deep") from None


def decode_json(data: bytes) -> Any:
    """The value of bytes ``encode_json`` wrote into a store or changelog (bytes after the
    first JSON value are not checked: stores hold only what ``encode_json`` wrote)."""
    if data and data[0] in _INT_START:
        try:
            return int(data)
        except ValueError:  # a float
            pass
    return _raw_decode(data.decode())[0]


def _json_encoder(obj: Any) -> bytes | None:
    return None if obj is None else encode_json(obj)


def _json_decoder(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise SerdeError(f"invalid UTF-8 in JSON data: {_utf8_error(exc)} in {_preview(data)}") from None
    try:
        obj, end = _json_scan(text, 0)
        if end == len(text):
            return obj
    except (StopIteration, ValueError):
        pass
    try:  # whitespace around the document, or invalid: the full decoder accepts or explains
        return _json_decode(text)
    except ValueError as exc:
        raise SerdeError(f"invalid JSON: {exc} in {_preview(data)}") from None


def _string_encoder(obj: Any) -> bytes | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        try:
            return obj.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from JSON's "\ud800"
            raise SerdeError(f"cannot encode {_preview(obj)} as a UTF-8 string: {exc.reason} "
                             f"({exc.object[exc.start:exc.end]!r} at position {exc.start})") from None
    # Only str: converting would be lossy and silent (True -> "True", 1 and "1" alike,
    # NaN -> "nan"), so two different keys could become one.
    raise SerdeError(f"cannot encode {type(obj).__name__} {_preview(obj)} in format string: it takes "
                     "only strings; convert explicitly with `| string` in the expression, or "
                     "declare the format json (e.g. `key: json`)")


def _string_decoder(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise SerdeError(f"invalid UTF-8 string: {_utf8_error(exc)} in {_preview(data)}") from None


def _bytes_encoder(obj: Any) -> bytes | None:
    if obj is None or isinstance(obj, bytes):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise SerdeError(f"cannot encode {type(obj).__name__} as bytes (format bytes expects bytes)")


def _bytes_decoder(data: bytes | None) -> Any:
    return data


_FORMATS: dict[str, tuple[Encoder, Decoder]] = {
    "json": (_json_encoder, _json_decoder),
    "string": (_string_encoder, _string_decoder),
    "bytes": (_bytes_encoder, _bytes_decoder),
}


def _utf8_error(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start:exc.end].hex()} at position {exc.start} ({exc.reason})"


def _preview(obj: Any, limit: int = 80) -> str:
    """``obj`` for a message, cut at ``limit`` characters: bytes as their text between quotes
    (what a user sent, not Python's b'...'; undecodable bytes and control characters escaped),
    anything else as its repr."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        text = bytes(obj).decode(errors="backslashreplace")
        cut = text if len(text) <= limit else text[:limit] + "..."
        return "'" + _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), cut) + "'"
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


@lru_cache(maxsize=None)
def _validator(path: Path) -> jsonschema.protocols.Validator:
    try:
        schema = json.loads(path.read_text())
    except OSError as exc:
        raise SerdeError(f"cannot read event schema {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SerdeError(f"event schema {path} is not valid JSON: {exc}") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SerdeError(f"event schema {path} is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


@lru_cache(maxsize=None)
def _fast_check(path: Path) -> Callable[[Any], bool]:
    """``is_valid`` for the schema at ``path``: jsonschema-rs (compiled, about 100 times faster
    than the Python validator on the events of the examples) where it takes the schema and the
    value, else the Python validator. The Python one still explains what fails (``_schema_error``,
    ``schema_violations``), so messages do not depend on which one checked."""
    python = _validator(path)
    try:
        import jsonschema_rs

        fast = jsonschema_rs.validator_for(python.schema).is_valid
    except (ImportError, ValueError):  # not installed, or a schema it cannot compile
        return python.is_valid

    def is_valid(obj: Any) -> bool:
        try:
            return fast(obj)
        except ValueError:  # a value it cannot take (e.g. a dict with non-string keys)
            return python.is_valid(obj)

    return is_valid


def _schema_error(validator: jsonschema.protocols.Validator, path: Path, obj: Any) -> SerdeError:
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is None:  # only the fast validator refused it: its own words
        found = "; ".join(f"{v.pointer or '(root)'}: {v.message}" for v in _fast_violations(validator, obj))
        return SerdeError(f"value does not match schema {path.name}: {found}")
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return SerdeError(f"value does not match schema {path.name} at {where}: {error.message}")


def _fast_violations(validator: jsonschema.protocols.Validator, obj: Any) -> list["Violation"]:
    import jsonschema_rs

    return [Violation(_pointer(e.instance_path), e.message)
            for e in jsonschema_rs.validator_for(validator.schema).iter_errors(obj)]


def _keyed(encode: Encoder) -> Encoder:
    """``encode`` refusing null: the key of a record of an entity stream."""

    def encode_key(obj: Any) -> bytes | None:
        if obj is None:
            raise SerdeError("a null key cannot be written to an entity stream: its topic is compacted "
                             "(the latest value per key), and Kafka refuses a record without a key; "
                             "compute a key, or filter such events out")
        return encode(obj)

    return encode_key


@dataclass(frozen=True)
class Violation:
    """One way a value fails its schema: ``pointer`` (RFC 6901) to the offending part of the
    value ("" for the value itself), and the validator's ``message``."""

    pointer: str
    message: str


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def schema_violations(spec: SerdeSpec) -> Callable[[Any], list[Violation]]:
    """For values of ``spec``: every way a value fails the schema (none without a schema, or
    for a tombstone where tombstones are allowed), in the order of the value's paths."""
    if spec.schema is None:
        return lambda obj: []
    path = Path(spec.schema)
    validator = _validator(path)
    is_valid = _fast_check(path)
    tombstones = spec.tombstones

    def violations(obj: Any) -> list[Violation]:
        if (obj is None and tombstones) or is_valid(obj):
            return []
        errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
        found = [Violation(_pointer(e.absolute_path), e.message) for e in errors]
        return found or _fast_violations(validator, obj)

    return violations


def make_serde(spec: SerdeSpec) -> Serde:
    """The serde for ``spec``; with a schema, values are validated after decoding and
    before encoding."""
    try:
        encode, decode = _FORMATS[spec.format]
    except KeyError:
        raise SerdeError(f"unknown format {spec.format!r}; use one of {', '.join(_FORMATS)}") from None
    if spec.keyed:
        encode = _keyed(encode)
    if spec.schema is None:
        return Serde(spec.format, encode, decode)
    path = Path(spec.schema)
    validator = _validator(path)
    is_valid = _fast_check(path)
    tombstones = spec.tombstones

    def checked_encode(obj: Any) -> bytes | None:
        if not (obj is None and tombstones) and not is_valid(obj):
            raise _schema_error(validator, path, obj)
        return encode(obj)

    def checked_decode(data: bytes | None) -> Any:
        obj = decode(data)
        if not (obj is None and tombstones) and not is_valid(obj):
            raise _schema_error(validator, path, obj)
        return obj

    return Serde(spec.format, checked_encode, checked_decode)
