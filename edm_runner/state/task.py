"""One task's local state: an LMDB environment with a database per store plus ``__meta``.

Layout: ``<state_dir>/state/<service>/<subtopology>_<partition>/`` (global tables:
``.../global/``), and next to it ``<dir>.lock``, flocked by the process that owns the task.
``__meta`` holds ``format`` (layout version), ``checkpoint`` (JSON, see ``Checkpoint``) and
``store:<name>`` (JSON ``{"type", "params", "fingerprint"}``) per store registered and
written: a definition enters ``__meta`` with the first transaction that writes data or a
checkpoint under it, so a store refused before that (its changelog holds another
definition) leaves nothing behind that would refuse the definition it has.

Invariants:
- Store updates and the checkpoint that describes them change in ONE write transaction
  (``commit``, ``apply_changelog``), so after any crash, even SIGKILL mid-commit, the data
  and the checkpoint agree.
- An environment LMDB cannot open, or whose ``__meta`` is unreadable, is wiped (with a
  warning naming the path and the reason) and reopened empty: ``fresh`` is then True and
  the caller restores every store from zero.
- A store whose stored fingerprint differs from its definition refuses to open
  (``IncompatibleStoreError``); a store new to the environment is simply added.
- One process owns a task directory at a time (the flock).
- The stores' buffered updates are one store transaction at a time (``transaction``, see
  ``state.transaction``): ``prepare`` takes its changelog records and seals the buffers,
  ``commit`` writes it, ``abort`` drops it; an illegal move raises ``TransactionStateError``.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import lmdb

from edm_runner.brokers.base import TopicPartition
from edm_runner import faults
from edm_runner.errors import EdmError
from edm_runner.invocation import Invocation
from edm_runner.state.query import StoreQuery
from edm_runner.state.stores import STORE_CLASSES, AnyStore, Journal
from edm_runner.state.transaction import StoreTransaction

log = logging.getLogger("edm.state")

DEFAULT_MAP_SIZE = 16 << 30  # sparse: only pages in use take disk space
MAX_STORES = 127
FORMAT_VERSION = 1
META_DB = b"__meta"
_FORMAT = b"format"
_CHECKPOINT = b"checkpoint"
_STORE = b"store:"


def service_dir(state_dir: Path, service: str) -> Path:
    return Path(state_dir) / "state" / service


def task_dir(state_dir: Path, service: str, subtopology: int, partition: int) -> Path:
    return service_dir(state_dir, service) / f"{subtopology}_{partition}"


def global_dir(state_dir: Path, service: str) -> Path:
    return service_dir(state_dir, service) / "global"


def tp_key(tp: TopicPartition) -> str:
    """``topic:partition``, as in checkpoints and the ``edm.input`` header."""
    return f"{tp.topic}:{tp.partition}"


def parse_tp_key(text: str) -> TopicPartition:
    topic, sep, partition = text.rpartition(":")
    if not sep or not topic:
        raise ValueError(f"not a topic:partition: {text!r}")
    return TopicPartition(topic, int(partition))


def parse_offsets(doc: Mapping[str, Any]) -> dict[TopicPartition, int]:
    """``{"topic:partition": offset}`` -> offsets; ValueError/TypeError when malformed."""
    out = {}
    for k, v in doc.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"bad offset {v!r} for {k}")
        out[parse_tp_key(k)] = v
    return out


@dataclass
class Checkpoint:
    """Next offsets the task's stores reflect: per changelog (or table source) partition
    restored or written, and per input partition processed."""

    changelogs: dict[TopicPartition, int] = field(default_factory=dict)
    inputs: dict[TopicPartition, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"changelogs": {tp_key(tp): o for tp, o in self.changelogs.items()},
                           "inputs": {tp_key(tp): o for tp, o in self.inputs.items()}},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Checkpoint":
        doc = json.loads(raw)
        return cls(parse_offsets(doc["changelogs"]), parse_offsets(doc["inputs"]))

    def merged(self, update: "Checkpoint") -> "Checkpoint":
        """This checkpoint with ``update``'s entries replacing ours."""
        return Checkpoint({**self.changelogs, **update.changelogs}, {**self.inputs, **update.inputs})


def fingerprint(kind: str, params: Mapping[str, Any] | None) -> str:
    """A stable hash of a store definition (type and the operator's params)."""
    canonical = json.dumps({"type": kind, "params": dict(params or {})}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class IncompatibleStoreError(EdmError):
    """A store's definition changed in a way its local data cannot follow."""


class _Unreadable(Exception):
    """The environment or its ``__meta`` cannot be read: wipe and start empty."""


def _describe_change(old: Mapping[str, Any], kind: str, params: Mapping[str, Any]) -> str:
    changes = []
    if old.get("type") != kind:
        changes.append(f"type {old.get('type')} -> {kind}")
    old_params = old.get("params") or {}
    for name in sorted(set(old_params) | set(params)):
        if old_params.get(name) != params.get(name):
            changes.append(f"{name} {json.dumps(old_params.get(name))} -> "
                           f"{json.dumps(params.get(name))}")
    return ", ".join(changes) or "definition changed"


def _lock(lock_file: Path, timeout_s: float) -> int:
    """Take the exclusive flock on ``lock_file``; EdmError if another process keeps it
    beyond ``timeout_s`` (a task moving between two instances on one machine)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise EdmError(f"the local state at {lock_file.with_suffix('')} is in use by another "
                           "edm process (it holds the lock file); stop it, or give this instance "
                           "its own state directory (--state-dir)")
        time.sleep(0.05)  # no event to await across processes: poll the lock


def _read_meta(env: lmdb.Environment) -> tuple[lmdb._Database, Checkpoint, dict[str, dict]]:
    """Open ``__meta`` (initialising it in a new environment) and decode it."""
    with env.begin(write=True) as txn:
        meta = env.open_db(META_DB, txn=txn, create=True)
        fmt = txn.get(_FORMAT, db=meta)
        if fmt is None:
            if txn.stat(meta)["entries"]:
                raise _Unreadable("__meta has no format marker")
            txn.put(_FORMAT, str(FORMAT_VERSION).encode(), db=meta)
            txn.put(_CHECKPOINT, Checkpoint().to_json(), db=meta)
            return meta, Checkpoint(), {}
        if fmt != str(FORMAT_VERSION).encode():
            raise _Unreadable(f"unknown state format {fmt!r}")
        raw = txn.get(_CHECKPOINT, db=meta)
        if raw is None:
            raise _Unreadable("__meta has no checkpoint")
        checkpoint = Checkpoint.from_json(raw)
        definitions = {}
        cur = txn.cursor(db=meta)
        if cur.set_range(_STORE):
            for k, v in cur:
                if not k.startswith(_STORE):
                    break
                doc = json.loads(v)
                if not isinstance(doc.get("fingerprint"), str):
                    raise ValueError(f"store entry {k!r} has no fingerprint")
                definitions[k[len(_STORE):].decode()] = doc
        return meta, checkpoint, definitions


class TaskState:
    """The open state of one task. Use ``TaskState.open``; close it (or use ``with``)."""

    def __init__(self, path: Path, env: lmdb.Environment, meta: lmdb._Database,
                 checkpoint: Checkpoint, definitions: dict[str, dict], lock_fd: int | None,
                 fresh: bool, invocation: Invocation):
        self.path = path
        self.env = env
        self.fresh = fresh
        self.max_key_size = env.max_key_size()
        self._meta = meta
        self._checkpoint = checkpoint
        self._definitions = definitions
        self._unwritten: dict[str, dict] = {}  # registered, not yet in __meta
        self._lock_fd = lock_fd
        self._invocation = invocation
        self._stores: dict[str, AnyStore] = {}
        self._rtxn: lmdb.Transaction | None = None
        self.transaction = StoreTransaction(path)  # the buffered updates since the last commit
        self.journal = Journal()  # the undo log of the event being applied, for every store

    @classmethod
    def open(cls, path: Path, *, invocation: Invocation | None = None,
             map_size: int = DEFAULT_MAP_SIZE, lock: bool = True,
             lock_timeout_s: float = 30.0) -> "TaskState":
        """Open (creating, or wiping when unreadable) the environment at ``path``.
        ``invocation`` is how the user ran edm: the `edm reset` hint of errors repeats it."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdmError(f"cannot create the state directory {path}: {e.strerror}; "
                           "check --state-dir") from e
        if not os.access(path, os.W_OK):
            raise EdmError(f"the state directory {path} is not writable; check its permissions "
                           "or use another --state-dir")
        lock_fd = _lock(path.with_name(path.name + ".lock"), lock_timeout_s) if lock else None
        try:
            fresh = not (path / "data.mdb").exists()
            try:
                env, opened = cls._open_env(path, map_size)
            except _Unreadable as e:
                log.warning("local state at %s is unreadable (%s): wiping it; its stores will be "
                            "restored from their changelogs or rebuilt from their inputs", path, e)
                shutil.rmtree(path)
                path.mkdir(parents=True)
                env, opened = cls._open_env(path, map_size)
                fresh = True
            meta, checkpoint, definitions = opened
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(path, env, meta, checkpoint, definitions, lock_fd, fresh,
                   invocation or Invocation())

    @staticmethod
    def _open_env(path: Path, map_size: int
                  ) -> tuple[lmdb.Environment, tuple[lmdb._Database, Checkpoint, dict[str, dict]]]:
        try:
            env = lmdb.open(str(path), map_size=map_size, max_dbs=MAX_STORES + 1, sync=True,
                            metasync=True, readahead=False)
        except lmdb.Error as e:
            raise _Unreadable(str(e)) from e
        try:
            return env, _read_meta(env)
        except (lmdb.Error, ValueError, TypeError, KeyError, AttributeError) as e:
            env.close()
            raise _Unreadable(f"__meta: {e}") from e

    # -- stores ---------------------------------------------------------------------------

    def register(self, name: str, kind: str, params: Mapping[str, Any] | None = None, *,
                 changelog: bool = True) -> AnyStore:
        """Open store ``name`` of type ``kind`` (key_value, window, session). ``params`` are
        what its data depends on (e.g. a window size); a change of them or of the type
        against the stored definition raises ``IncompatibleStoreError``."""
        if name.startswith("__") or not name:
            raise ValueError(f"invalid store name {name!r}")
        params = dict(params or {})
        fp = fingerprint(kind, params)
        existing = self._stores.get(name)
        if existing is not None:
            if self._definitions[name]["fingerprint"] != fp:
                raise ValueError(f"store {name!r} registered twice with different definitions")
            return existing
        stored = self._definitions.get(name)
        if stored is not None and stored["fingerprint"] != fp:
            raise self.incompatible(name, {"type": kind, "params": params, "fingerprint": fp}, stored,
                                    f"its local state at {self.path}")
        self._end_read()
        definition = {"type": kind, "params": params, "fingerprint": fp}
        with self._errors(), self.env.begin(write=True) as txn:
            db = self.env.open_db(name.encode(), txn=txn, create=True)
        if stored is None:
            self._unwritten[name] = definition
        self._definitions[name] = definition
        store = STORE_CLASSES[kind](name, db, self, changelog)
        self._stores[name] = store  # type: ignore[assignment]
        return store  # type: ignore[return-value]

    def definition(self, name: str) -> Mapping[str, Any]:
        """``{"type", "params", "fingerprint"}`` of registered store ``name``."""
        return self._definitions[name]

    def incompatible(self, name: str, new: Mapping[str, Any], old: Mapping[str, Any],
                     where: str) -> IncompatibleStoreError:
        """The refusal of store ``name`` defined as ``new`` when ``where`` (its local state, or
        its changelog) holds data of the definition ``old`` (``{"fingerprint"}`` alone when
        only that is known): the same words on every machine, with the ways out."""
        if "type" in old:
            change = _describe_change(old, new["type"], new["params"])
        else:
            change = (f"fingerprint {old['fingerprint']} -> {new['fingerprint']}: now type {new['type']}, "
                      f"params {json.dumps(new['params'], sort_keys=True, default=str)}")
        return IncompatibleStoreError(
            f"store {name!r} changed since {where} was written ({change}); its data does not fit "
            f"the new definition: with every instance stopped, run `{self._invocation.command('reset')}` "
            "to rebuild it from its inputs, or give the store a new name, or revert the change")

    def _write_definitions(self, txn: lmdb.Transaction) -> None:
        for name, definition in self._unwritten.items():
            txn.put(_STORE + name.encode(), json.dumps(definition, sort_keys=True, default=str).encode(),
                    db=self._meta)

    def store(self, name: str) -> AnyStore:
        try:
            return self._stores[name]
        except KeyError:
            raise RuntimeError(f"store {name!r} is not registered in the task at {self.path}; "
                               f"registered: {', '.join(sorted(self._stores)) or 'none'}") from None

    def query(self, name: str) -> StoreQuery:
        """Read-only queries of registered store ``name``'s committed data (``state.query``)."""
        return StoreQuery(self.env, self.store(name).db, self._definitions[name]["type"])

    def read_txn(self) -> lmdb.Transaction:
        """The read transaction store reads use; renewed after every write."""
        if self._rtxn is None:
            self._rtxn = self.env.begin()
        return self._rtxn

    def _end_read(self) -> None:
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Store name -> (entries, bytes of its pages) as committed (buffered writes not
        included). A short read transaction of its own; the caller must not close the task
        meanwhile (the runtime reads it under its batch lock)."""
        out: dict[str, tuple[int, int]] = {}
        with self.env.begin() as txn:
            for name, store in self._stores.items():
                stat = txn.stat(store.db)
                pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                out[name] = (stat["entries"], pages * stat["psize"])
        return out

    # -- batches --------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return any(s.writes for s in self._stores.values())

    def dirty_changelog_records(self) -> list[tuple[str, bytes, bytes | None]]:
        """(store, key bytes, value bytes or None) per key written in this batch, latest
        value, for the stores that have a changelog."""
        return [(s.name, k, v) for s in self._stores.values() if s.changelog
                for k, v in s.encoded().items()]

    def prepare(self) -> list[tuple[str, bytes, bytes | None]]:
        """The transaction's changelog records (``dirty_changelog_records``), taken to be sent
        before ``commit``: the transaction is prepared and its buffers refuse further writes."""
        self.transaction.move("prepare")
        for s in self._stores.values():
            s.seal()
        return self.dirty_changelog_records()

    def commit(self, checkpoint: Checkpoint) -> None:
        """Write every store's buffered updates and ``checkpoint`` (merged into the stored
        one, entry by entry) in one transaction, then clear the buffers and start the next
        store transaction. On failure nothing is written, the store transaction is failed
        and keeps its buffers (sealed): the caller aborts it."""
        self.transaction.check("commit")
        self._end_read()
        merged = self._checkpoint.merged(checkpoint)
        with self._errors(), self._failing(), self.env.begin(write=True) as txn:
            for s in self._stores.values():
                if not s.writes:
                    continue
                items = sorted(s.encoded().items())
                puts = [kv for kv in items if kv[1] is not None]
                if puts:
                    txn.cursor(db=s.db).putmulti(puts)
                if len(puts) != len(items):
                    for k, v in items:
                        if v is None:
                            txn.delete(k, db=s.db)
            txn.put(_CHECKPOINT, merged.to_json(), db=self._meta)
            self._write_definitions(txn)
            faults.reached("store_write")
        self.transaction.move("commit")
        self._checkpoint = merged
        self._unwritten.clear()
        for s in self._stores.values():
            s.clear()
        self.transaction = StoreTransaction(self.path)

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """A failed LMDB write fails the store transaction and seals its buffers."""
        try:
            yield
        except BaseException:
            self.transaction.move("fail")
            for s in self._stores.values():
                s.seal()
            raise

    def abort(self) -> None:
        """Drop the buffered updates (a failed batch, a failed flush or write) and start the
        next store transaction."""
        self.transaction.move("abort")
        self._end_read()
        for s in self._stores.values():
            s.clear()
        self.transaction = StoreTransaction(self.path)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(dict(self._checkpoint.changelogs), dict(self._checkpoint.inputs))

    # -- restore --------------------------------------------------------------------------

    def apply_changelog(self, name: str, entries: list[tuple[bytes, bytes | None]], *,
                        changelog: Mapping[TopicPartition, int] | None = None,
                        inputs_at_least: Mapping[TopicPartition, int] | None = None) -> None:
        """Apply restored ``entries`` (in log order, None deletes) to store ``name`` as is,
        and advance the checkpoint (``changelog`` entries replace, ``inputs_at_least`` only
        raise input offsets), in one transaction. The store's buffer must be empty."""
        store = self.store(name)
        assert not store.writes, "restore runs before the task processes anything"
        self._end_read()
        cp = self._checkpoint
        inputs = dict(cp.inputs)
        for tp, offset in (inputs_at_least or {}).items():
            if offset > inputs.get(tp, -1):
                inputs[tp] = offset
        merged = Checkpoint({**cp.changelogs, **(changelog or {})}, inputs)
        with self._errors(), self.env.begin(write=True) as txn:
            if entries:
                cur = txn.cursor(db=store.db)
                if any(v is None for _, v in entries):
                    latest = dict(entries)
                    cur.putmulti([kv for kv in latest.items() if kv[1] is not None])
                    for k, v in latest.items():
                        if v is None:
                            txn.delete(k, db=store.db)
                else:
                    cur.putmulti(entries)  # type: ignore[arg-type]
            txn.put(_CHECKPOINT, merged.to_json(), db=self._meta)
            self._write_definitions(txn)
        self._checkpoint = merged
        self._unwritten.clear()

    def wipe_store(self, name: str, *, changelog_tps: Iterable[TopicPartition] = (),
                   forget_inputs: bool = False) -> None:
        """Empty store ``name`` and drop its checkpoint entries (``changelog_tps``; all input
        offsets too with ``forget_inputs``), in one transaction."""
        store = self.store(name)
        self._end_read()
        store.clear()
        cp = self._checkpoint
        dropped = set(changelog_tps)
        merged = Checkpoint({tp: o for tp, o in cp.changelogs.items() if tp not in dropped},
                            {} if forget_inputs else dict(cp.inputs))
        with self._errors(), self.env.begin(write=True) as txn:
            txn.drop(store.db, delete=False)
            txn.put(_CHECKPOINT, merged.to_json(), db=self._meta)
            self._write_definitions(txn)
        self._checkpoint = merged
        self._unwritten.clear()

    # -- lifecycle ------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn LMDB write failures into user-facing errors."""
        try:
            yield
        except lmdb.MapFullError as e:
            raise EdmError(f"the local state at {self.path} is full (map size "
                           f"{self.env.info()['map_size'] >> 20} MiB); shorten the retention of "
                           "its window stores, or give the task fewer keys (more partitions)") from e
        except lmdb.Error as e:
            raise EdmError(f"writing the local state at {self.path} failed: {e}") from e

    def close(self) -> None:
        """Close the environment and release the task's lock; buffered writes are dropped."""
        self._end_read()
        self._stores.clear()
        self.env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "TaskState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
