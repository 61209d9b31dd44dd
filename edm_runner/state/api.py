"""What operators see of state: typed stores bound to the task being processed.

Contract (see docs/design/stateful.md):
- Keys are Python values (str, int, ...); values are JSON-able Python values. ``None`` as a
  value means delete. In LMDB and in changelogs both are compact JSON (``encode_json``), so
  restore copies bytes and keys decode unambiguously.
- Writes go to the task's write buffer; reads see the buffer first. Nothing reaches LMDB or
  the changelog until the runtime commits the batch.
- ``StoreRef.get()`` returns the store of the task currently being processed; call it once
  per ``process(batch)`` (a batch always belongs to one task).
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Protocol


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring  # what the encoder uses for str, without its setup


def encode_json(obj: Any) -> bytes:
    """Store and changelog bytes of a key or a value: compact JSON, UTF-8
    (``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``; str and int take a
    fast path with the same output, as keys and counts are on every store access)."""
    kind = type(obj)
    if kind is str:
        return _encode_str(obj).encode("utf-8")
    if kind is int:
        return repr(obj).encode()
    return _encode(obj).encode("utf-8")


def decode_json(data: bytes) -> Any:
    """The value of store or changelog bytes (inverse of ``encode_json``; bytes after the
    first JSON value are not checked)."""
    if data[:1] in _INT_START:
        try:
            return int(data)
        except ValueError:  # a float
            pass
    return _raw_decode(data.decode("utf-8"))[0]


_INT_START = frozenset(bytes([c]) for c in b"-0123456789")
_raw_decode = json.JSONDecoder().raw_decode


def partition_bytes(key: Any) -> bytes:
    """The bytes the default partitioner hashes for a key on internal topics: a str as UTF-8
    (what a `key: string` stream holds, so a re-keyed stream is copartitioned with a declared
    string-keyed topic), bytes as is, anything else compact JSON."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    return encode_json(key)


class KeyValueStore(Protocol):
    name: str

    def get(self, key: Any) -> Any | None: ...

    def put(self, key: Any, value: Any | None) -> None:
        """``value`` None deletes the key."""
        ...

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[Any, Any]]:
        """(key, value) in stored-bytes order of keys whose JSON bytes start with ``prefix``,
        the write buffer merged in."""
        ...


class WindowStore(Protocol):
    """Values per (key, window start). Windows are ``[start, start + size)``."""

    name: str

    def get(self, key: Any, start: int) -> Any | None: ...

    def put(self, key: Any, start: int, value: Any | None) -> None: ...

    def fetch(self, key: Any, start_from: int, start_to: int) -> Iterator[tuple[int, Any]]:
        """(start, value) of ``key``'s windows with ``start_from <= start <= start_to``, by start."""
        ...

    def fetch_all(self, start_from: int, start_to: int) -> Iterator[tuple[Any, int, Any]]:
        """(key, start, value) of every window with a start in the range (for emit final and
        retention), by start then key."""
        ...


class SessionStore(Protocol):
    """Values per (key, session start, session end), ends inclusive."""

    name: str

    def find(self, key: Any, earliest_end: int, latest_start: int) -> list[tuple[int, int, Any]]:
        """(start, end, value) of ``key``'s sessions with end >= earliest_end and start <= latest_start."""
        ...

    def put(self, key: Any, start: int, end: int, value: Any | None) -> None: ...

    def fetch_all(self, end_from: int, end_to: int) -> Iterator[tuple[Any, int, int, Any]]:
        """(key, start, end, value) of every session ending in the range."""
        ...


class StoreRef(Protocol):
    """A handle an operator keeps from build time; ``get()`` is the current task's store."""

    name: str

    def get(self) -> Any: ...
