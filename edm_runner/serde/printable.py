"""The JSON form of record bytes on the command line: `edm consume` prints it, `edm produce`
reads it back, so ``edm consume ... | edm produce ...`` writes the very same bytes.

Rule (``to_json`` and its inverse ``from_json``, for one stream format):
- Bytes the format decodes to a value it can encode again print as that value. With format
  ``bytes`` (the decoded value is the bytes themselves), UTF-8 bytes print as their text, and
  a string reads back as its UTF-8 bytes.
- Anything else prints as ``{"base64": "..."}``: bytes the format cannot decode (invalid JSON,
  invalid UTF-8) or cannot encode again (JSON ``"\ud800"``, a lone surrogate), and a decoded
  value that has that very shape, so that the shape always means raw bytes, whatever the format.
- Header values follow the rule of format ``bytes``.
So the bytes read back are the bytes printed, except that JSON is read back in edm's own
compact encoding (``{"a": 1}`` becomes ``{"a":1}``: the same value), as edm writes it anyway.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from edm_runner.serde.core import Serde, SerdeError

__all__ = ["to_json", "from_json", "header_to_json", "header_from_json"]


def to_json(data: bytes | None, serde: Serde) -> Any:
    """The printable form of ``data`` written in ``serde``'s format."""
    if data is None:
        return None
    try:
        decoded = serde.decode(data)
        if isinstance(decoded, bytes):
            return header_to_json(decoded)
        serde.encode(decoded)
    except SerdeError:
        return _base64(data)
    return _base64(data) if _is_base64(decoded) else decoded


def from_json(obj: Any, serde: Serde) -> bytes | None:
    """The bytes whose printable form is ``obj``; raises ``SerdeError`` saying why not."""
    if _is_base64(obj):
        return _unbase64(obj["base64"])
    if serde.format == "bytes" and isinstance(obj, str):
        return _utf8(obj)
    return serde.encode(obj)


def header_to_json(data: bytes | None) -> str | dict[str, str] | None:
    """A header value (or bytes-format data): its UTF-8 text, else ``{"base64": ...}``."""
    if data is None:  # Kafka allows a header without a value
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _base64(data)


def header_from_json(obj: Any) -> bytes:
    """The bytes of a header value read from JSON: ``{"base64": ...}``, a string's UTF-8, or
    the text of a number or boolean."""
    if _is_base64(obj):
        return _unbase64(obj["base64"])
    if isinstance(obj, str):
        return _utf8(obj)
    if isinstance(obj, (int, float, bool)):
        return str(obj).encode()
    raise SerdeError(f"a header value is a string or {{\"base64\": ...}}, not {type(obj).__name__}")


def _is_base64(obj: Any) -> bool:
    return type(obj) is dict and len(obj) == 1 and isinstance(obj.get("base64"), str)


def _base64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise SerdeError(f"invalid base64 in {{\"base64\": ...}}: {exc}") from None


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerdeError(f"the string holds {exc.object[exc.start:exc.end]!r} at position {exc.start}, "
                         f"which UTF-8 cannot encode ({exc.reason}); "
                         "write raw bytes as {\"base64\": ...}") from None
