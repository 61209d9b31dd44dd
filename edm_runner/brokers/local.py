"""The embedded broker: durable partitioned logs in one LMDB environment.

Layout (one environment under ``path``, named databases):
- ``topics``:  topic name -> JSON ``{"id", "partitions", "compacted", "config"}``
- ``meta``:    ``next_topic_id`` -> u64 (topic ids are never reused)
- ``log``:     (topic id u32, partition u32, offset u64), big-endian -> encoded record, so
               cursor order is offset order within a partition
- ``ends``:    (topic id, partition) -> next offset to assign (u64)
- ``clean``:   (topic id, partition) -> (offset compacted up to, live records then)
- ``offsets``: group NUL topic NUL partition u32 -> committed next offset (u64)

Invariants:
- Offsets are assigned inside the write transaction that stores the records, so they are
  dense per partition even with several processes appending at once (LMDB serialises
  writers across processes); only compaction makes gaps, as in Kafka.
- Every write is one LMDB transaction with sync on: after a crash (even SIGKILL mid-write)
  the log holds exactly the committed batches, never a torn one.
- One ``lmdb.Environment`` per directory per process (LMDB forbids opening one twice), and
  a process that forked reopens instead of using its parent's handle.
- A consumer group is held by one process at a time (``flock`` on ``groups/<group>.lock``).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import re
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import quote

import lmdb

from edm_runner.brokers.base import (BrokerFullError, GroupAssignor, Headers, OutRecord, PartitionMismatchError,
                                     RebalanceListener, Record, TimestampBound, TopicPartition, TopicSpec, offsets_of)
from edm_runner.errors import BrokerError

MAP_SIZE = 64 << 30  # sparse: only pages in use take disk space
MAX_READERS = 1024
COMPACT_MIN_DIRTY = 1000
READER_CHECK_EVERY = 1024  # writes between sweeps of reader slots left by killed processes

_LOG_KEY = struct.Struct(">IIQ")  # topic id, partition, offset
_TP_KEY = struct.Struct(">II")  # topic id, partition
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CLEAN = struct.Struct(">QQ")  # offset compacted up to, live records after that compaction
_REC = struct.Struct(">qiiH")  # timestamp, key length, value length (-1: None), header count
_HDR = struct.Struct(">HI")  # header name length, header value length
_REC_SIZE = _REC.size
_KEYLEN_AT = 8  # byte offset of the key length inside _REC
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NEXT_TOPIC_ID = b"next_topic_id"


@dataclass(frozen=True, slots=True)
class _TopicMeta:
    id: int
    partitions: int
    compacted: bool
    config: dict[str, str]


@dataclass(slots=True)
class _Env:
    env: lmdb.Environment
    topics: lmdb._Database
    meta: lmdb._Database
    log: lmdb._Database
    ends: lmdb._Database
    clean: lmdb._Database
    offsets: lmdb._Database
    refs: int
    pid: int


_ENVS: dict[str, _Env] = {}
_GROUP_LOCKS: dict[str, list[int]] = {}  # lock file -> [fd, references]
_REGISTRY_LOCK = threading.Lock()
_META_CACHE: dict[bytes, _TopicMeta] = {}  # raw JSON of a topic -> parsed (avoids re-parsing)


def _release_group_locks_after_fork() -> None:
    # The flocks belong to the parent; a child keeping the descriptors would keep the groups
    # locked after the parent dies.
    for fd, _ in _GROUP_LOCKS.values():
        os.close(fd)
    _GROUP_LOCKS.clear()


os.register_at_fork(after_in_child=_release_group_locks_after_fork)


def _open_env(path: Path, map_size: int) -> _Env:
    key = str(path.resolve())
    with _REGISTRY_LOCK:
        handle = _ENVS.get(key)
        if handle is not None and handle.pid != os.getpid():
            # Inherited through fork: unusable here (LMDB) and blocking a reopen (py-lmdb).
            # Closing the child's copy leaves the parent's reader slots and locks alone.
            handle.env.close()
            handle = None
        if handle is None:
            try:
                path.mkdir(parents=True, exist_ok=True)
                env = lmdb.open(key, map_size=map_size, max_dbs=8, max_readers=MAX_READERS,
                                sync=True, metasync=True)
            except (OSError, lmdb.Error) as e:
                raise BrokerError(f"cannot open the local broker at {path}: {e}; check that the "
                                  "directory is writable and not on a network filesystem") from e
            env.reader_check()  # free reader slots left by killed processes
            handle = _Env(env, *(env.open_db(name) for name in
                                 (b"topics", b"meta", b"log", b"ends", b"clean", b"offsets")),
                          refs=0, pid=os.getpid())
            _ENVS[key] = handle
        handle.refs += 1
        return handle


def _close_env(path: Path) -> None:
    key = str(path.resolve())
    with _REGISTRY_LOCK:
        handle = _ENVS.get(key)
        if handle is None or handle.pid != os.getpid():
            return
        handle.refs -= 1
        if handle.refs == 0:
            del _ENVS[key]
            handle.env.close()


def _topic_meta(raw: bytes) -> _TopicMeta:
    meta = _META_CACHE.get(raw)
    if meta is None:
        d = json.loads(raw)
        meta = _TopicMeta(d["id"], d["partitions"], d["compacted"], d["config"])
        _META_CACHE[raw] = meta
    return meta


def _offsets_key(group: str, topic: str, partition: int) -> bytes:
    return f"{group}\0{topic}\0".encode() + _U32.pack(partition)


def _encode(r: OutRecord) -> bytes:
    key, value, headers = r.key, r.value, r.headers
    head = _REC.pack(r.timestamp_ms, -1 if key is None else len(key),
                     -1 if value is None else len(value), len(headers))
    if not headers:
        return b"".join((head, key or b"", value or b""))
    parts = [head, key or b"", value or b""]
    for name, hvalue in headers:
        bname = name.encode()
        parts += (_HDR.pack(len(bname), len(hvalue)), bname, hvalue)
    return b"".join(parts)


def _decode_headers(buf: bytes, pos: int, count: int) -> Headers:
    headers = []
    for _ in range(count):
        nlen, vlen = _HDR.unpack_from(buf, pos)
        pos += _HDR.size
        name = buf[pos:pos + nlen].decode()
        pos += nlen
        headers.append((name, buf[pos:pos + vlen]))
        pos += vlen
    return tuple(headers)


def _read_partition(cur: lmdb.Cursor, topic: str, tid: int, partition: int, start: int,
                    limit: int) -> list[Record]:
    """Up to ``limit`` records of one partition from offset ``start`` (gaps skipped)."""
    out: list[Record] = []
    if limit <= 0 or not cur.set_range(_LOG_KEY.pack(tid, partition, start)):
        return out
    prefix = _TP_KEY.pack(tid, partition)
    unpack_rec = _REC.unpack_from
    append = out.append
    for k, buf in cur:
        if k[:8] != prefix:
            break
        ts, klen, vlen, nh = unpack_rec(buf)
        pos = _REC_SIZE
        if klen >= 0:
            key = buf[pos:pos + klen]
            pos += klen
        else:
            key = None
        if vlen >= 0:
            value = buf[pos:pos + vlen]
            pos += vlen
        else:
            value = None
        append(Record(topic, partition, int.from_bytes(k[8:], "big"), key, value, ts,
                      _decode_headers(buf, pos, nh) if nh else ()))
        if len(out) >= limit:
            break
    return out


class LocalBroker:
    """The embedded broker at ``path`` (created if missing). Several processes may use the
    same directory at once; each consumer group is held by one process at a time."""

    supports_assignor = False  # a group has one member, holding every partition
    atomic_append = True  # append_and_commit: records and group offsets in one LMDB transaction
    transactions = False

    def __init__(self, path: Path, *, map_size: int = MAP_SIZE,
                 compact_min_dirty: int = COMPACT_MIN_DIRTY):
        self.path = Path(path)
        self.map_size = map_size
        self.compact_min_dirty = compact_min_dirty
        self._handle: _Env | None = None
        self._pid = 0
        self._writes = 0

    def describe(self) -> str:
        return f"local broker at {self.path}"

    def _h(self) -> _Env:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open_env(self.path, self.map_size)
            self._pid = os.getpid()
        return self._handle

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn LMDB failures into user-facing BrokerErrors."""
        try:
            yield
        except lmdb.MapFullError as e:
            raise BrokerFullError(str(self.path), self.map_size) from e
        except lmdb.Error as e:
            raise BrokerError(f"local broker at {self.path} failed: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[tuple[_Env, lmdb.Transaction]]:
        h = self._h()
        with self._errors(), h.env.begin(write=True) as txn:
            yield h, txn

    @contextmanager
    def _read(self) -> Iterator[tuple[_Env, lmdb.Transaction]]:
        h = self._h()
        with self._errors(), h.env.begin() as txn:
            yield h, txn

    async def start(self) -> None:
        await asyncio.to_thread(self._h)  # opening (or creating) the environment writes

    async def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            _close_env(self.path)
        self._handle = None

    # -- topics ----------------------------------------------------------------------------

    def _metas(self, h: _Env, txn: lmdb.Transaction, topics: Sequence[str]) -> dict[str, _TopicMeta]:
        """Metadata of ``topics``; missing ones are a BrokerError listing them all."""
        metas, missing = {}, []
        for t in topics:
            raw = txn.get(t.encode(), db=h.topics)
            if raw is None:
                missing.append(t)
            else:
                metas[t] = _topic_meta(raw)
        if missing:
            raise BrokerError(f"{self.describe()} has no topic(s) {', '.join(sorted(missing))}; "
                              "run the topology that writes them, or let edm create them")
        return metas

    def _ensure_topics_sync(self, specs: Sequence[TopicSpec], create: bool) -> None:
        for s in specs:
            if not _TOPIC_NAME.match(s.name):
                raise BrokerError(f"invalid topic name {s.name!r}: use 1-249 characters among "
                                  "letters, digits, '.', '_' and '-'")
            if s.partitions < 1:
                raise BrokerError(f"topic {s.name} needs at least 1 partition, got {s.partitions}")
        with self._write() as (h, txn):
            missing, mismatched = [], {}
            for s in specs:
                raw = txn.get(s.name.encode(), db=h.topics)
                if raw is None:
                    missing.append(s)
                elif (have := _topic_meta(raw).partitions) != s.partitions:
                    mismatched[s.name] = (have, s.partitions)
            if mismatched:
                raise PartitionMismatchError(self.describe(), mismatched)
            if missing and not create:
                raise BrokerError(f"{self.describe()} has no topic(s) "
                                  f"{', '.join(sorted(s.name for s in missing))}; create them "
                                  "or allow edm to create topics")
            if not missing:
                return
            raw_id = txn.get(_NEXT_TOPIC_ID, db=h.meta)
            next_id = _U64.unpack(raw_id)[0] if raw_id else 1
            for s in missing:
                doc = {"id": next_id, "partitions": s.partitions, "compacted": s.compacted,
                       "config": dict(s.config)}
                txn.put(s.name.encode(), json.dumps(doc, sort_keys=True).encode(), db=h.topics)
                next_id += 1
            txn.put(_NEXT_TOPIC_ID, _U64.pack(next_id), db=h.meta)

    async def ensure_topics(self, specs: Sequence[TopicSpec], create: bool = True) -> None:
        await asyncio.to_thread(self._ensure_topics_sync, specs, create)

    async def timestamp_bounds(self, topics: Sequence[str]) -> dict[str, TimestampBound]:
        """None: every topic keeps Kafka's default bound, so what runs here runs on Kafka."""
        return {}

    async def list_topics(self) -> dict[str, int]:
        with self._read() as (h, txn):
            return {k.decode(): _topic_meta(v).partitions for k, v in txn.cursor(db=h.topics)}

    async def delete_topic(self, name: str) -> bool:
        """Delete a topic, its records and every group's committed offsets on it.
        Returns False when there was no such topic."""
        return await asyncio.to_thread(self._delete_topic_sync, name)

    def _delete_topic_sync(self, name: str) -> bool:
        with self._write() as (h, txn):
            raw = txn.get(name.encode(), db=h.topics)
            if raw is None:
                return False
            meta = _topic_meta(raw)
            cur = txn.cursor(db=h.log)
            prefix = _U32.pack(meta.id)
            if cur.set_range(prefix):
                while cur.key()[:4] == prefix:
                    if not cur.delete():
                        break
            for p in range(meta.partitions):
                txn.delete(_TP_KEY.pack(meta.id, p), db=h.ends)
                txn.delete(_TP_KEY.pack(meta.id, p), db=h.clean)
            suffix_topic = f"\0{name}\0".encode()
            stale = [k for k in txn.cursor(db=h.offsets).iternext(values=False)
                     if k[:-4].endswith(suffix_topic)]
            for k in stale:
                txn.delete(k, db=h.offsets)
            txn.delete(name.encode(), db=h.topics)
            return True

    # -- offsets ---------------------------------------------------------------------------

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offset to be assigned, per partition."""
        with self._read() as (h, txn):
            metas = self._metas(h, txn, sorted({tp.topic for tp in tps}))
            out = {}
            for tp in tps:
                raw = txn.get(_TP_KEY.pack(metas[tp.topic].id, tp.partition), db=h.ends)
                out[tp] = _U64.unpack(raw)[0] if raw else 0
            return out

    async def committed(self, group: str, tp: TopicPartition) -> int | None:
        with self._read() as (h, txn):
            raw = txn.get(_offsets_key(group, tp.topic, tp.partition), db=h.offsets)
            return _U64.unpack(raw)[0] if raw else None

    def _commit_in(self, h: _Env, txn: lmdb.Transaction, group: str,
                   offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            txn.put(_offsets_key(group, tp.topic, tp.partition), _U64.pack(offset), db=h.offsets)

    def _commit_sync(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        with self._write() as (h, txn):
            self._commit_in(h, txn, group, offsets)

    # -- administration (edm reset) ---------------------------------------------------------

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """First stored offset per partition (compaction may have removed offset 0); the
        end offset when the partition is empty."""
        ends = await self.end_offsets(tps)
        with self._read() as (h, txn):
            metas = self._metas(h, txn, sorted({tp.topic for tp in tps}))
            cur = txn.cursor(db=h.log)
            out = {}
            for tp in tps:
                prefix = _TP_KEY.pack(metas[tp.topic].id, tp.partition)
                found = cur.set_range(prefix) and cur.key()[:8] == prefix
                out[tp] = int.from_bytes(cur.key()[8:], "big") if found else ends[tp]
            return out

    async def offsets_for_times(self, tps: Sequence[TopicPartition],
                                timestamp_ms: int) -> dict[TopicPartition, int]:
        """First offset whose timestamp is >= ``timestamp_ms``, else the end offset. A linear
        scan (the local log has no time index): fine for a reset, not for a hot path."""
        return await asyncio.to_thread(self._offsets_for_times_sync, tps, timestamp_ms)

    def _offsets_for_times_sync(self, tps: Sequence[TopicPartition],
                                timestamp_ms: int) -> dict[TopicPartition, int]:
        out = {}
        with self._read() as (h, txn):
            metas = self._metas(h, txn, sorted({tp.topic for tp in tps}))
            cur = txn.cursor(db=h.log)
            for tp in tps:
                tid = metas[tp.topic].id
                raw = txn.get(_TP_KEY.pack(tid, tp.partition), db=h.ends)
                out[tp] = _U64.unpack(raw)[0] if raw else 0
                prefix = _TP_KEY.pack(tid, tp.partition)
                if not cur.set_range(prefix):
                    continue
                for k, buf in cur:
                    if k[:8] != prefix:
                        break
                    if _REC.unpack_from(buf)[0] >= timestamp_ms:
                        out[tp] = int.from_bytes(k[8:], "big")
                        break
        return out

    async def group_offsets(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        partitions = await self.list_topics()
        out = {}
        for topic in topics:
            for p in range(partitions.get(topic, 0)):
                offset = await self.committed(group, TopicPartition(topic, p))
                if offset is not None:
                    out[TopicPartition(topic, p)] = offset
        return out

    async def group_alive(self, group: str) -> bool:
        """True when another process holds the group's lock (a runner of the service)."""
        try:
            lock_file = self._lock_group(group)
        except BrokerError:
            return True
        self._unlock_group(lock_file)
        return False

    async def set_group_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Holds the group's lock while committing, so no runner can start in between."""
        lock_file = self._lock_group(group)
        try:
            await asyncio.to_thread(self._commit_sync, group, dict(offsets))
        finally:
            self._unlock_group(lock_file)

    async def delete_topics(self, names: Sequence[str]) -> None:
        for name in names:
            await self.delete_topic(name)

    # -- appending and compaction ----------------------------------------------------------

    def _append_in(self, h: _Env, txn: lmdb.Transaction,
                   records: Sequence[OutRecord]) -> dict[TopicPartition, int]:
        """Append ``records`` inside ``txn`` (each partition's in input order); returns the new
        end offset of every partition written. Compacts the written partitions of compacted
        topics that are dirty enough."""
        groups: dict[tuple[str, int], list[OutRecord]] = {}
        for r in records:
            group = groups.get((r.topic, r.partition))
            if group is None:
                groups[(r.topic, r.partition)] = group = []
            group.append(r)
        metas = self._metas(h, txn, sorted({topic for topic, _ in groups}))
        cur = txn.cursor(db=h.log)
        pack = _LOG_KEY.pack
        ends = {}
        for (topic, partition), group in groups.items():
            meta = metas[topic]
            if not 0 <= partition < meta.partitions:
                raise BrokerError(f"partition {partition} does not exist in topic {topic}, "
                                  f"which has {meta.partitions} partitions")
            tid = meta.id
            raw = txn.get(_TP_KEY.pack(tid, partition), db=h.ends)
            start = _U64.unpack(raw)[0] if raw else 0
            cur.putmulti([(pack(tid, partition, offset), _encode(r))
                          for offset, r in enumerate(group, start)])
            end = start + len(group)
            txn.put(_TP_KEY.pack(tid, partition), _U64.pack(end), db=h.ends)
            ends[TopicPartition(topic, partition)] = end
            if meta.compacted:
                self._maybe_compact(h, txn, tid, partition, end)
        return ends

    def _maybe_compact(self, h: _Env, txn: lmdb.Transaction, tid: int, partition: int,
                       end: int) -> None:
        # Like Kafka's min.cleanable.dirty.ratio=0.5: clean when the records appended since the
        # last compaction are at least as many as the live ones it left, so each record is
        # rewritten O(1) times on average.
        raw = txn.get(_TP_KEY.pack(tid, partition), db=h.clean)
        cleaned_to, live = _CLEAN.unpack(raw) if raw else (0, 0)
        if end - cleaned_to >= max(self.compact_min_dirty, live):
            self._compact_partition(h, txn, tid, partition, end)

    @staticmethod
    def _compact_partition(h: _Env, txn: lmdb.Transaction, tid: int, partition: int,
                           end: int) -> int:
        """Keep only the latest record per key (tombstones included; null keys all kept)."""
        prefix = _TP_KEY.pack(tid, partition)
        latest: dict[bytes, bytes] = {}
        stale: list[bytes] = []
        live = 0
        cur = txn.cursor(db=h.log)
        if cur.set_range(prefix):
            unpack_klen = struct.Struct(">i").unpack_from
            for k, buf in cur:
                if k[:8] != prefix:
                    break
                live += 1
                (klen,) = unpack_klen(buf, _KEYLEN_AT)
                if klen < 0:
                    continue
                rkey = buf[_REC_SIZE:_REC_SIZE + klen]
                previous = latest.get(rkey)
                if previous is not None:
                    stale.append(previous)
                latest[rkey] = k
        for k in stale:
            txn.delete(k, db=h.log)
        txn.put(prefix, _CLEAN.pack(end, live - len(stale)), db=h.clean)
        return len(stale)

    def _append_sync(self, records: Sequence[OutRecord], group: str | None = None,
                     offsets: Mapping[TopicPartition, int] | None = None
                     ) -> dict[TopicPartition, int]:
        with self._write() as (h, txn):
            written = self._append_in(h, txn, records)
            if group is not None and offsets:
                self._commit_in(h, txn, group, offsets)
        self._writes += 1
        if self._writes % READER_CHECK_EVERY == 0:
            # A reader killed mid-transaction pins old pages until its slot is freed.
            h.env.reader_check()
        return written

    async def append_and_commit(self, records: Sequence[OutRecord], group: str,
                                offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Append ``records`` and commit ``group``'s ``offsets`` in ONE transaction: both or
        neither survive a crash (exactly-once on the local broker). Returns the new end
        offset of every partition written (e.g. a changelog checkpoint)."""
        return await asyncio.to_thread(self._append_sync, records, group, offsets)

    async def compact(self, topic: str) -> int:
        """Compact every partition of ``topic`` now; returns how many records were removed."""
        return await asyncio.to_thread(self._compact_sync, topic)

    def _compact_sync(self, topic: str) -> int:
        with self._write() as (h, txn):
            meta = self._metas(h, txn, [topic])[topic]
            removed = 0
            for p in range(meta.partitions):
                raw = txn.get(_TP_KEY.pack(meta.id, p), db=h.ends)
                removed += self._compact_partition(h, txn, meta.id, p,
                                                   _U64.unpack(raw)[0] if raw else 0)
            return removed

    # -- reading ---------------------------------------------------------------------------

    def _read_sync(self, positions: Mapping[TopicPartition, int], order: Sequence[TopicPartition],
                   max_records: int) -> dict[TopicPartition, list[Record]]:
        """Records after ``positions``, fair across ``order``: each partition first gets an
        equal share of ``max_records``; what is left goes to partitions with more data."""
        out: dict[TopicPartition, list[Record]] = {}
        with self._read() as (h, txn):
            metas = self._metas(h, txn, sorted({tp.topic for tp in order}))
            cur = txn.cursor(db=h.log)
            share = max(1, -(-max_records // max(1, len(order))))
            remaining = max_records
            full = []
            for tp in order:
                got = _read_partition(cur, tp.topic, metas[tp.topic].id, tp.partition,
                                      positions[tp], min(share, remaining))
                if got:
                    out[tp] = got
                    remaining -= len(got)
                    if len(got) == share:
                        full.append(tp)
            for tp in full:
                if remaining <= 0:
                    break
                more = _read_partition(cur, tp.topic, metas[tp.topic].id, tp.partition,
                                       out[tp][-1].offset + 1, remaining)
                out[tp] += more
                remaining -= len(more)
        return out

    # -- clients ---------------------------------------------------------------------------

    def consumer(self, group: str | None, topics: Sequence[str], *,
                 from_beginning: bool = True, partitions: Sequence[TopicPartition] | None = None,
                 listener: RebalanceListener | None = None, assignor: GroupAssignor | None = None,
                 group_instance_id: str | None = None) -> LocalConsumer:
        """See ``Broker.consumer``; ``assignor`` and ``group_instance_id`` are ignored."""
        return LocalConsumer(self, group, list(topics), from_beginning, partitions, listener)

    def producer(self) -> LocalProducer:
        return LocalProducer(self)

    def _lock_group(self, group: str) -> str:
        """Take the process-wide advisory lock of ``group``; returns its lock file."""
        lock_dir = self.path / "groups"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_file = str((lock_dir / f"{quote(group, safe='')}.lock").resolve())
        with _REGISTRY_LOCK:
            held = _GROUP_LOCKS.get(lock_file)
            if held is not None:
                held[1] += 1
                return lock_file
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise BrokerError(
                        f"another instance of service {group!r} is running on {self.describe()} "
                        f"(it holds {lock_file}); stop it first: the local broker runs one "
                        "instance per service, use Kafka to run several") from e
                raise
            _GROUP_LOCKS[lock_file] = [fd, 1]
            return lock_file

    @staticmethod
    def _unlock_group(lock_file: str) -> None:
        with _REGISTRY_LOCK:
            held = _GROUP_LOCKS.get(lock_file)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del _GROUP_LOCKS[lock_file]
                os.close(held[0])  # closing the last descriptor releases the flock


class LocalConsumer:
    """Reads every partition of its topics (the local broker has one member per group).
    Positions live in memory; ``commit`` makes them durable for the group. A group member's
    ``listener`` is assigned every partition once, at the end of ``start``."""

    def __init__(self, broker: LocalBroker, group: str | None, topics: list[str],
                 from_beginning: bool, partitions: Sequence[TopicPartition] | None = None,
                 listener: RebalanceListener | None = None):
        self._broker = broker
        self._listener = listener if group is not None else None
        self._group = group
        self._topics = topics
        self._only = list(partitions) if partitions is not None else None
        self._from_beginning = from_beginning
        self._positions: dict[TopicPartition, int] = {}
        self._order: list[TopicPartition] = []
        self._paused: set[TopicPartition] = set()
        self._lock_file: str | None = None

    async def start(self) -> None:
        if self._group is not None:
            self._lock_file = self._broker._lock_group(self._group)
        try:
            partitions = await self._broker.list_topics()
            missing = [t for t in self._topics if t not in partitions]
            if missing:
                raise BrokerError(f"{self._broker.describe()} has no topic(s) "
                                  f"{', '.join(sorted(missing))} to consume; create them first")
            tps = [TopicPartition(t, p) for t in self._topics for p in range(partitions[t])]
            if self._only is not None:
                tps = [tp for tp in tps if tp in self._only]
            ends = await self._broker.end_offsets(tps)
            for tp in tps:
                committed = (await self._broker.committed(self._group, tp)
                             if self._group is not None else None)
                if committed is not None:
                    self._positions[tp] = committed
                else:
                    self._positions[tp] = 0 if self._from_beginning else ends[tp]
            self._order = tps
            if self._listener is not None:
                await self._listener.assigned(set(tps))
        except BaseException:
            await self.close()
            raise

    def assignment(self) -> set[TopicPartition]:
        return set(self._order)

    async def getmany(self, timeout_ms: int = 0,
                      max_records: int = 10_000) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records`` records, waiting up to ``timeout_ms`` for new ones by polling
        with a backoff from 1 ms to 20 ms, from the partitions not paused. Rotates the partition
        order on every call so no partition is starved."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        delay = 0.001
        order = [tp for tp in self._order if tp not in self._paused] if self._paused else self._order
        if not order:  # every partition paused: nothing to read until one is resumed
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        while True:
            out = self._broker._read_sync(self._positions, order, max_records)
            if out:
                for tp, records in out.items():
                    self._positions[tp] = records[-1].offset + 1
                if len(self._order) > 1:
                    self._order.append(self._order.pop(0))
                return out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._group is None:
            raise BrokerError("a consumer without a group cannot commit offsets")
        await asyncio.to_thread(self._broker._commit_sync, self._group, dict(offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        return None if self._group is None else await self._broker.committed(self._group, tp)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._broker.end_offsets(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise BrokerError(f"cannot seek {tp.topic}[{tp.partition}]: not assigned to this consumer")
        self._positions[tp] = offset

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update(tp for tp in tps if tp in self._positions)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.difference_update(tps)

    async def close(self) -> None:
        if self._lock_file is not None:
            self._broker._unlock_group(self._lock_file)
            self._lock_file = None


class LocalProducer:
    """Buffers records; ``flush`` writes the whole buffer in one durable LMDB transaction."""

    def __init__(self, broker: LocalBroker):
        self._broker = broker
        self._buffer: list[OutRecord] = []

    async def start(self) -> None:
        self._broker._h()

    def send(self, record: OutRecord) -> None:
        self._buffer.append(record)

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await asyncio.to_thread(self._broker._append_sync, batch)
        except BaseException:
            self._buffer[:0] = batch  # nothing was written: keep the records for a retry
            raise

    async def write(self, records: Sequence[OutRecord]) -> list[int]:
        """One durable LMDB transaction of ``records`` (not the ``send`` buffer)."""
        if not records:
            return []
        ends = await asyncio.to_thread(self._broker._append_sync, records)
        return offsets_of(records, ends)

    async def close(self) -> None:
        await self.flush()
