"""LMDB-backed implementations of ``state.api``'s stores, over a per-task write buffer.

The write buffer (``_Store.writes``, one dict per store: key bytes -> entry) holds a batch's
updates until the task commits them (``TaskState.commit``). An entry is:
- ``None``: the key is deleted;
- ``bytes``: the value's compact JSON (``encode_json``), encoded at ``put``;
- an immutable scalar (``bool``, an ``int`` or finite ``float`` of bounded size, a short ASCII
  ``str``): the value itself, not encoded yet (``_deferred`` decides). Its encoding cannot fail
  and fits the size limits, so nothing the commit does can fail where the put did not; it is
  encoded once, when the batch becomes changelog records or is committed (``encoded``).

Invariants:
- Nothing but ``writes`` changes until the task commits them; reads look at ``writes`` first,
  so a batch reads its own writes, and LMDB is read only for keys the batch has not written.
  A failed batch (``TaskState.abort``) leaves LMDB as it was.
- ``writes`` keeps the latest value per key, so it is also the batch's changelog (one record
  per dirty key). ``put`` refuses, with an ``EventError`` of the event, a key longer than LMDB
  takes and, in a store with a changelog, a write whose record would be larger than
  ``MAX_RECORD_BYTES`` (no broker could keep it); the entry is unchanged then.
- A value read back equals the value put. Mutating a returned value, or a value after putting
  it, never changes the store: scalars are immutable, and containers are kept as the bytes
  encoded at ``put`` and decoded afresh by every read.
- ``Journal``: every put records the entry it replaces, so a rollback to a mark restores the
  buffers of all stores of the task to what they were then: the puts of a failed step or
  event vanish, as if it had not been there.
- Iteration order is stored-bytes order (see ``state.keys`` for the window/session layout).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, NoReturn, Protocol

import sys

from edm_runner.brokers.base import MAX_RECORD_BYTES, check_record_size
from edm_runner.errors import EventError
from edm_runner.state.api import decode_json, encode_json
from edm_runner.state.transaction import SealedWrites
from edm_runner.state.keys import (key_prefix, session_key, split_session_key,
                                   split_window_key, time_bytes, window_key)

if TYPE_CHECKING:
    import lmdb

_loads = decode_json
_UNSET: Any = object()
_MIN_TIME = -(1 << 63)
_MAX_TIME = (1 << 63) - 1
_BIG = 10 ** 15      # ints and floats of smaller magnitude stay decoded in the buffer
_SHORT = 1024        # so do ASCII strings up to this length: their JSON is at most 6x + 2 bytes


def _deferred(value: Any, limit: int) -> bool:
    """Whether ``value`` (not None) may wait in the buffer undecoded: immutable, and its JSON
    can neither fail nor exceed ``limit`` bytes."""
    kind = type(value)
    if kind is int or kind is float:
        return -_BIG < value < _BIG  # False for NaN and the infinities too
    if kind is str:
        return len(value) <= _SHORT and 6 * len(value) + 2 <= limit and value.isascii()
    return kind is bool


def _decoded(entry: Any) -> Any:
    """The value of a buffer entry (a fresh copy when it is a container)."""
    return _loads(entry) if type(entry) is bytes else entry


def key_too_long(store: str, k: bytes, limit: int) -> EventError:
    """The error of an event whose key (``k``, its store bytes) does not fit in LMDB."""
    return EventError(f"store {store!r}: a key of {len(k)} bytes exceeds LMDB's limit of {limit} bytes "
                      f"({k[:60]!r}...); use a shorter key")


def _merge(stored: Iterable[tuple[bytes, bytes]], buffered: list[tuple[bytes, Any]]
           ) -> Iterator[tuple[bytes, Any]]:
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


class Journal:
    """The undo log of one task's write buffers: every put records ``(store, key, the entry it
    replaced)``, so ``rollback(mark)`` undoes the puts made since ``mark()``, newest first, in
    every store of the task. The runtime marks before each step and each replayed event
    (``runtime.processing``) and ``forget``s the records of a batch once it is processed; a
    store's ``clear`` (commit, abort) forgets them too.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[_Store, bytes, Any]] = []

    def mark(self) -> int:
        return len(self.entries)

    def rollback(self, mark: int) -> None:
        entries = self.entries
        while len(entries) > mark:
            store, k, old = entries.pop()
            store._restore(k, old)

    def forget(self) -> None:
        self.entries.clear()


class TaskView(Protocol):
    """What a store needs of the task it belongs to (``state.task.TaskState``)."""

    max_key_size: int
    journal: Journal

    def read_txn(self) -> "lmdb.Transaction": ...


class _Store:
    """What the three store types share: the buffer and merged range reads."""

    kind: ClassVar[str]

    def __init__(self, name: str, db: "lmdb._Database", state: TaskView, changelog: bool):
        self.name = name
        self.db = db
        self.changelog = changelog
        self.writes: dict[bytes, Any] = {}  # key bytes -> entry (see the module docstring)
        self.journal = state.journal
        self._read_txn = state.read_txn
        self._max_key = state.max_key_size
        self._max_record = MAX_RECORD_BYTES if changelog else sys.maxsize
        self._last_key: Any = _UNSET  # the last str/int key encoded, and its bytes
        self._last_bytes = b""

    def _key(self, key: Any) -> bytes:
        """``encode_json(key)``, once per key in a row: an event's get and put share it."""
        if key is self._last_key:
            return self._last_bytes
        k = encode_json(key)
        if type(key) is str or type(key) is int:
            self._last_key, self._last_bytes = key, k
        return k

    def _get_raw(self, k: bytes) -> Any:
        """The buffer entry of ``k``, else its stored bytes (None: absent)."""
        v = self.writes.get(k, _UNSET)
        if v is _UNSET:
            return self._read_txn().get(k, db=self.db)
        return v

    def _put_raw(self, k: bytes, value: Any | None) -> None:
        """Buffer ``value`` (None deletes) under ``k``, checked against the limits first."""
        if len(k) > self._max_key:
            self._too_long(k)
        if value is None or _deferred(value, self._max_record - len(k)):
            entry = value
        else:
            entry = encode_json(value)
            if len(k) + len(entry) > self._max_record:
                self._too_large(k, entry)
        writes = self.writes
        self.journal.entries.append((self, k, writes.get(k, _UNSET)))
        writes[k] = entry

    def _restore(self, k: bytes, old: Any) -> None:
        """Put back the entry ``k`` had (``_UNSET``: none) before a rolled back put."""
        if old is _UNSET:
            self.writes.pop(k, None)
        else:
            self.writes[k] = old

    def _too_long(self, k: bytes) -> NoReturn:
        raise key_too_long(self.name, k, self._max_key)

    def _too_large(self, k: bytes, v: bytes) -> NoReturn:
        check_record_size(f"store {self.name!r}: the changelog record of key {k[:60]!r}", k, v)
        raise AssertionError("check_record_size accepted a record above the limit")

    def encoded(self) -> dict[bytes, bytes | None]:
        """The buffer with every entry encoded (in place, once per transaction; a sealed
        buffer is encoded already): key bytes -> value bytes, None for a delete; what the
        changelog and the commit write."""
        writes = self.writes
        for k, v in writes.items():
            if v is not None and type(v) is not bytes:
                writes[k] = encode_json(v)
        return writes

    def _stored_range(self, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Stored entries with ``lo <= key <= hi`` (``hi`` None: to the end)."""
        cur = self._read_txn().cursor(db=self.db)
        if not cur.set_range(lo):
            return
        for k, v in cur:
            if hi is not None and k > hi:
                return
            yield k, v

    def _range(self, lo: bytes, hi: bytes | None,
               candidates: Iterable[bytes] | None = None) -> Iterator[tuple[bytes, Any]]:
        """Live entries with ``lo <= key <= hi`` in byte order, the buffer merged in: (key
        bytes, stored bytes or buffer entry; ``_decoded`` gives the value).
        ``candidates``: the buffered keys worth looking at (default: all of them)."""
        writes = self.writes
        pool = writes if candidates is None else candidates
        buffered = sorted((k, writes[k]) for k in pool
                          if lo <= k and (hi is None or k <= hi) and k in writes)
        return _merge(self._stored_range(lo, hi), buffered)

    def seal(self) -> None:
        """The transaction is prepared or failed: the buffer, encoded, refuses writes until
        ``clear``."""
        self.writes = SealedWrites(self.encoded(), self.name)

    def clear(self) -> None:
        """Drops the buffered writes (committed or aborted); the buffer takes writes again."""
        self.writes = {}
        self._last_key = _UNSET
        self.journal.forget()


class LmdbKeyValueStore(_Store):
    """``api.KeyValueStore``: key bytes are the key's compact JSON."""

    kind = "key_value"

    # get and put inline _key/_get_raw/_put_raw: they run for every event of a count.
    def get(self, key: Any) -> Any | None:
        if key is self._last_key:
            k = self._last_bytes
        else:
            k = encode_json(key)
            if type(key) is str or type(key) is int:
                self._last_key, self._last_bytes = key, k
        v = self.writes.get(k, _UNSET)
        if v is _UNSET:
            v = self._read_txn().get(k, db=self.db)
            return None if v is None else _loads(v)
        return _loads(v) if type(v) is bytes else v

    def put(self, key: Any, value: Any | None) -> None:
        k = self._last_bytes if key is self._last_key else self._key(key)
        if type(value) is int and -_BIG < value < _BIG and len(k) <= self._max_key:
            writes = self.writes  # _put_raw's path for a count, inlined
            self.journal.entries.append((self, k, writes.get(k, _UNSET)))
            writes[k] = value
        else:
            self._put_raw(k, value)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[Any, Any]]:
        for k, v in self._range(prefix, None):
            if not k.startswith(prefix):
                return
            yield _loads(k), _decoded(v)


class _Composite(_Store):
    """Window and session stores: the buffer is also indexed by key prefix, so a per-key
    range read looks at that key's buffered windows only (a superset after a rollback)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._by_prefix: dict[bytes, set[bytes]] = {}

    def _put_composite(self, prefix: bytes, k: bytes, value: Any | None) -> None:
        self._put_raw(k, value)
        keys = self._by_prefix.get(prefix)
        if keys is None:
            self._by_prefix[prefix] = {k}
        else:
            keys.add(k)

    def clear(self) -> None:
        super().clear()
        self._by_prefix.clear()

    def _by_last_time(self, lo: int, hi: int) -> list[tuple[bytes, Any]]:
        """Live (key bytes, stored bytes or buffer entry) whose last 8 key bytes (window
        start, session end) are in ``[lo, hi]``, by that time then key. A full scan comparing
        raw bytes, nothing decoded (the store is bounded by retention)."""
        lo_b, hi_b = time_bytes(lo), time_bytes(hi)
        writes = self.writes
        found = [(k[-8:], k, v) for k, v in self._read_txn().cursor(db=self.db)
                 if lo_b <= k[-8:] <= hi_b and k not in writes]
        found += [(k[-8:], k, v) for k, v in writes.items()
                  if v is not None and lo_b <= k[-8:] <= hi_b]
        found.sort(key=lambda row: row[:2])
        return [(k, v) for _, k, v in found]


class LmdbWindowStore(_Composite):
    """``api.WindowStore`` (layout in ``state.keys``)."""

    kind = "window"

    def get(self, key: Any, start: int) -> Any | None:
        v = self._get_raw(window_key(self._key(key), start))
        return None if v is None else _decoded(v)

    def put(self, key: Any, start: int, value: Any | None) -> None:
        kb = self._key(key)
        self._put_composite(key_prefix(kb), window_key(kb, start), value)

    def fetch(self, key: Any, start_from: int, start_to: int) -> Iterator[tuple[int, Any]]:
        kb = self._key(key)
        candidates = self._by_prefix.get(key_prefix(kb), ())
        # Every key between two windows of one key is a window of that key (state.keys).
        for k, v in self._range(window_key(kb, start_from), window_key(kb, start_to), candidates):
            yield split_window_key(k)[1], _decoded(v)

    def fetch_all(self, start_from: int, start_to: int) -> Iterator[tuple[Any, int, Any]]:
        for k, v in self._by_last_time(start_from, start_to):
            kb, start = split_window_key(k)
            yield _loads(kb), start, _decoded(v)


class LmdbSessionStore(_Composite):
    """``api.SessionStore`` (layout in ``state.keys``)."""

    kind = "session"

    def get(self, key: Any, start: int, end: int) -> Any | None:
        v = self._get_raw(session_key(self._key(key), start, end))
        return None if v is None else _decoded(v)

    def put(self, key: Any, start: int, end: int, value: Any | None) -> None:
        kb = self._key(key)
        self._put_composite(key_prefix(kb), session_key(kb, start, end), value)

    def find(self, key: Any, earliest_end: int, latest_start: int) -> list[tuple[int, int, Any]]:
        kb = self._key(key)
        candidates = self._by_prefix.get(key_prefix(kb), ())
        out = []
        for k, v in self._range(session_key(kb, _MIN_TIME, _MIN_TIME),
                                session_key(kb, latest_start, _MAX_TIME), candidates):
            _, start, end = split_session_key(k)
            if end >= earliest_end:
                out.append((start, end, _decoded(v)))
        return out

    def fetch_all(self, end_from: int, end_to: int) -> Iterator[tuple[Any, int, int, Any]]:
        for k, v in self._by_last_time(end_from, end_to):
            kb, start, end = split_session_key(k)
            yield _loads(kb), start, end, _decoded(v)


STORE_CLASSES: dict[str, type[_Store]] = {
    cls.kind: cls for cls in (LmdbKeyValueStore, LmdbWindowStore, LmdbSessionStore)}
AnyStore = LmdbKeyValueStore | LmdbWindowStore | LmdbSessionStore
