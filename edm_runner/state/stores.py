"""LMDB-backed implementations of ``state.api``'s stores, over a per-task write buffer.

Invariants:
- A store's writes land in ``writes`` (key bytes -> value bytes, None = delete) and nothing
  else until the task commits them (``TaskState.commit``); reads look at ``writes`` first,
  so a batch reads its own writes, and a failed batch (``TaskState.abort``) leaves LMDB as it was.
- ``writes`` keeps the latest value per key, so it is also the batch's changelog (one record
  per dirty key). A store with a changelog refuses, with an ``EventError`` of the event, a
  write whose record would be larger than ``MAX_RECORD_BYTES`` (no broker could keep it).
- Every value returned is decoded afresh: mutating it never changes the store.
- Iteration order is stored-bytes order (see ``state.keys`` for the window/session layout).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, NoReturn

import sys

from edm_runner.brokers.base import MAX_RECORD_BYTES, check_record_size
from edm_runner.errors import EventError
from edm_runner.state.api import decode_json, encode_json
from edm_runner.state.transaction import SealedWrites
from edm_runner.state.keys import (key_prefix, session_key, split_session_key,
                                   split_window_key, time_bytes, window_key)

if TYPE_CHECKING:
    import lmdb

    from edm_runner.state.task import TaskState

_loads = decode_json
_UNSET: Any = object()
_MIN_TIME = -(1 << 63)
_MAX_TIME = (1 << 63) - 1


def key_too_long(store: str, k: bytes, limit: int) -> EventError:
    """The error of an event whose key (``k``, its store bytes) does not fit in LMDB."""
    return EventError(f"store {store!r}: a key of {len(k)} bytes exceeds LMDB's limit of {limit} bytes "
                      f"({k[:60]!r}...); use a shorter key")


def _merge(stored: Iterable[tuple[bytes, bytes]], buffered: list[tuple[bytes, bytes | None]]
           ) -> Iterator[tuple[bytes, bytes]]:
    """Merge two byte-ordered streams; a buffered entry overrides (None hides) a stored one."""
    i, n = 0, len(buffered)
    for k, v in stored:
        while i < n and buffered[i][0] < k:
            bk, bv = buffered[i]
            i += 1
            if bv is not None:
                yield bk, bv
        if i < n and buffered[i][0] == k:
            bv = buffered[i][1]
            i += 1
            if bv is not None:
                yield k, bv
            continue
        yield k, v
    for bk, bv in buffered[i:]:
        if bv is not None:
            yield bk, bv


class _Store:
    """What the three store types share: the buffer and merged range reads."""

    kind: ClassVar[str]

    def __init__(self, name: str, db: "lmdb._Database", state: "TaskState", changelog: bool):
        self.name = name
        self.db = db
        self.changelog = changelog
        self.writes: dict[bytes, bytes | None] = {}
        self._state = state
        self._max_key = state.max_key_size
        self._max_record = MAX_RECORD_BYTES if changelog else sys.maxsize

    def _get_raw(self, k: bytes) -> bytes | None:
        writes = self.writes
        if k in writes:
            return writes[k]
        return self._state.read_txn().get(k, db=self.db)

    def _put_raw(self, k: bytes, v: bytes | None) -> None:
        if len(k) > self._max_key:
            self._too_long(k)
        if v is not None and len(k) + len(v) > self._max_record:
            self._too_large(k, v)
        self.writes[k] = v

    def _too_long(self, k: bytes) -> NoReturn:
        raise key_too_long(self.name, k, self._max_key)

    def _too_large(self, k: bytes, v: bytes) -> NoReturn:
        check_record_size(f"store {self.name!r}: the changelog record of key {k[:60]!r}", k, v)
        raise AssertionError("check_record_size accepted a record above the limit")

    def _stored_range(self, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Stored entries with ``lo <= key <= hi`` (``hi`` None: to the end)."""
        cur = self._state.read_txn().cursor(db=self.db)
        if not cur.set_range(lo):
            return
        for k, v in cur:
            if hi is not None and k > hi:
                return
            yield k, v

    def _range(self, lo: bytes, hi: bytes | None,
               candidates: Iterable[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Live entries with ``lo <= key <= hi`` in byte order, the buffer merged in.
        ``candidates``: the buffered keys worth looking at (default: all of them)."""
        pool = self.writes if candidates is None else candidates
        buffered = sorted((k, self.writes[k]) for k in pool
                          if lo <= k and (hi is None or k <= hi))
        return _merge(self._stored_range(lo, hi), buffered)

    def seal(self) -> None:
        """The transaction is prepared or failed: the buffer refuses writes until ``clear``."""
        self.writes = SealedWrites(self.writes, self.name)

    def clear(self) -> None:
        """Drops the buffered writes (committed or aborted); the buffer takes writes again."""
        self.writes = {}


class LmdbKeyValueStore(_Store):
    """``api.KeyValueStore``: key bytes are the key's compact JSON."""

    kind = "key_value"

    # get and put inline _get_raw/_put_raw: they run for every event of a count.
    def get(self, key: Any) -> Any | None:
        k = encode_json(key)
        v = self.writes.get(k, _UNSET)
        if v is _UNSET:
            v = (self._state._rtxn or self._state.read_txn()).get(k, db=self.db)
        return None if v is None else _loads(v)

    def put(self, key: Any, value: Any | None) -> None:
        k = encode_json(key)
        if len(k) > self._max_key:
            self._too_long(k)
        if value is None:
            self.writes[k] = None
            return
        v = encode_json(value)
        if len(k) + len(v) > self._max_record:
            self._too_large(k, v)
        self.writes[k] = v

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[Any, Any]]:
        for k, v in self._range(prefix, None):
            if not k.startswith(prefix):
                return
            yield _loads(k), _loads(v)


class _Composite(_Store):
    """Window and session stores: the buffer is also indexed by key prefix, so a per-key
    range read looks at that key's buffered windows only."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._by_prefix: dict[bytes, set[bytes]] = {}

    def _put_composite(self, prefix: bytes, k: bytes, v: bytes | None) -> None:
        self._put_raw(k, v)
        keys = self._by_prefix.get(prefix)
        if keys is None:
            self._by_prefix[prefix] = {k}
        else:
            keys.add(k)

    def clear(self) -> None:
        super().clear()
        self._by_prefix.clear()

    def _by_last_time(self, lo: int, hi: int) -> list[tuple[bytes, bytes]]:
        """Live (key, value) bytes whose last 8 key bytes (window start, session end) are in
        ``[lo, hi]``, by that time then key. A full scan comparing raw bytes, nothing decoded
        (the store is bounded by retention)."""
        lo_b, hi_b = time_bytes(lo), time_bytes(hi)
        writes = self.writes
        found = [(k[-8:], k, v) for k, v in self._state.read_txn().cursor(db=self.db)
                 if lo_b <= k[-8:] <= hi_b and k not in writes]
        found += [(k[-8:], k, v) for k, v in writes.items()
                  if v is not None and lo_b <= k[-8:] <= hi_b]
        found.sort()
        return [(k, v) for _, k, v in found]


class LmdbWindowStore(_Composite):
    """``api.WindowStore`` (layout in ``state.keys``)."""

    kind = "window"

    def get(self, key: Any, start: int) -> Any | None:
        v = self._get_raw(window_key(encode_json(key), start))
        return None if v is None else _loads(v)

    def put(self, key: Any, start: int, value: Any | None) -> None:
        kb = encode_json(key)
        self._put_composite(key_prefix(kb), window_key(kb, start),
                            None if value is None else encode_json(value))

    def fetch(self, key: Any, start_from: int, start_to: int) -> Iterator[tuple[int, Any]]:
        kb = encode_json(key)
        candidates = self._by_prefix.get(key_prefix(kb), ())
        # Every key between two windows of one key is a window of that key (state.keys).
        for k, v in self._range(window_key(kb, start_from), window_key(kb, start_to), candidates):
            yield split_window_key(k)[1], _loads(v)

    def fetch_all(self, start_from: int, start_to: int) -> Iterator[tuple[Any, int, Any]]:
        for k, v in self._by_last_time(start_from, start_to):
            kb, start = split_window_key(k)
            yield _loads(kb), start, _loads(v)


class LmdbSessionStore(_Composite):
    """``api.SessionStore`` (layout in ``state.keys``)."""

    kind = "session"

    def get(self, key: Any, start: int, end: int) -> Any | None:
        v = self._get_raw(session_key(encode_json(key), start, end))
        return None if v is None else _loads(v)

    def put(self, key: Any, start: int, end: int, value: Any | None) -> None:
        kb = encode_json(key)
        self._put_composite(key_prefix(kb), session_key(kb, start, end),
                            None if value is None else encode_json(value))

    def find(self, key: Any, earliest_end: int, latest_start: int) -> list[tuple[int, int, Any]]:
        kb = encode_json(key)
        candidates = self._by_prefix.get(key_prefix(kb), ())
        out = []
        for k, v in self._range(session_key(kb, _MIN_TIME, _MIN_TIME),
                                session_key(kb, latest_start, _MAX_TIME), candidates):
            _, start, end = split_session_key(k)
            if end >= earliest_end:
                out.append((start, end, _loads(v)))
        return out

    def fetch_all(self, end_from: int, end_to: int) -> Iterator[tuple[Any, int, int, Any]]:
        for k, v in self._by_last_time(end_from, end_to):
            kb, start, end = split_session_key(k)
            yield _loads(kb), start, end, _loads(v)


STORE_CLASSES: dict[str, type[_Store]] = {
    cls.kind: cls for cls in (LmdbKeyValueStore, LmdbWindowStore, LmdbSessionStore)}
AnyStore = LmdbKeyValueStore | LmdbWindowStore | LmdbSessionStore
