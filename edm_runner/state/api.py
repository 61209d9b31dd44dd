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

from typing import Any, Iterator, Protocol

# The one JSON codec of edm (serde.core): stores and changelogs hold exactly the bytes the
# `json` stream format writes, and refuse what it refuses (NaN, Infinity).
from edm_runner.serde.core import decode_json, encode_json

__all__ = ["decode_json", "encode_json"]


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
