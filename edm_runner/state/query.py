"""Reading a store of an open task for a query (the request-response side), never writing.

A ``StoreQuery`` reads what the task has *committed*: each call opens its own short LMDB read
transaction on the task's environment (LMDB readers never wait for the writer, and see the
last commit), so a query never sees a batch's uncommitted write buffer and never blocks
processing. Every call is bounded (``limit``), so a query holds the event loop for the time of
at most ``limit`` cursor steps.

The caller guarantees the environment stays open during a call: the runtime detaches a task
from what queries can reach, on the event loop, before it closes it (``runtime.view``), and a
call never awaits.

Keys are record keys as Python values (``api.encode_json`` is their stored form); results
carry each key's stored bytes too, the order of a store and the cursor of a scan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edm_runner.state.api import decode_json, encode_json
from edm_runner.state.keys import META, key_prefix, split_session_key, split_window_key, time_bytes

if TYPE_CHECKING:
    import lmdb

_MIN_TIME = -(1 << 63)
_MAX_TIME = (1 << 63) - 1


@dataclass(frozen=True)
class Row:
    """One stored value. ``key_bytes``: the key's stored form (its position in the store).
    ``start``/``end``: a window's start, a session's start and end (inclusive)."""

    key_bytes: bytes
    key: Any
    value: Any
    start: int | None = None
    end: int | None = None


class StoreQuery:
    """Read-only queries of one store of an open task environment."""

    def __init__(self, env: "lmdb.Environment", db: "lmdb._Database", kind: str) -> None:
        self.env = env
        self.db = db
        self.kind = kind

    def get(self, key: Any) -> Any | None:
        """The value of ``key`` in a key_value store (None: no such key). ``SerdeError`` when
        ``key`` cannot be a stored key."""
        kb = encode_json(key)
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(kb)
        return None if raw is None else decode_json(raw)

    def scan(self, *, lo: bytes = b"", hi: bytes | None = None, prefix: bytes = b"",
             after: bytes | None = None, limit: int) -> list[Row]:
        """Up to ``limit`` entries of a key_value store, in stored order, whose key bytes are
        ``>= lo``, ``< hi`` (None: no bound), start with ``prefix`` and are ``> after``."""
        start = max(lo, prefix, after + b"\x00" if after is not None else b"")
        rows: list[Row] = []
        with self.env.begin(db=self.db) as txn:
            cur = txn.cursor()
            if not cur.set_range(start):
                return rows
            for k, v in cur:
                if (hi is not None and k >= hi) or not k.startswith(prefix) or len(rows) >= limit:
                    break
                rows.append(Row(k, decode_json(k), decode_json(v)))
        return rows

    def windows(self, key: Any, start_from: int | None, start_to: int | None, limit: int) -> list[Row]:
        """Up to ``limit`` windows of ``key`` in a window store with ``start_from <= start <=
        start_to`` (None: unbounded), by start."""
        if key is META:
            return []
        prefix = key_prefix(encode_json(key))
        lo = prefix + time_bytes(_MIN_TIME if start_from is None else start_from)
        hi = prefix + time_bytes(_MAX_TIME if start_to is None else start_to)
        rows: list[Row] = []
        with self.env.begin(db=self.db) as txn:
            cur = txn.cursor()
            if not cur.set_range(lo):
                return rows
            for k, v in cur:
                if k > hi or len(rows) >= limit:
                    break
                kb, start = split_window_key(k)
                rows.append(Row(kb, key, decode_json(v), start))
        return rows

    def sessions(self, key: Any, end_from: int | None, start_to: int | None, limit: int) -> list[Row]:
        """Up to ``limit`` sessions of ``key`` in a session store that end at or after
        ``end_from`` and start at or before ``start_to`` (None: unbounded), by start."""
        if key is META:
            return []
        prefix = key_prefix(encode_json(key))
        rows: list[Row] = []
        with self.env.begin(db=self.db) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return rows
            for k, v in cur:
                if not k.startswith(prefix) or len(rows) >= limit:
                    break
                kb, start, end = split_session_key(k)
                if start_to is not None and start > start_to:
                    break
                if end_from is None or end >= end_from:
                    rows.append(Row(kb, key, decode_json(v), start, end))
        return rows
