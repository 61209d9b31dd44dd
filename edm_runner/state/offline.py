"""Reading and deleting a service's local state outside of the tasks a runner has open (`edm state`,
`edm reset`, and the freshness of each task on disk that a member reports when it joins its group).

Readers open each task environment read-only: they never change a store, a checkpoint or
a lock, so they are safe next to a running runner too (LMDB readers see the last commit).
Keys are matched in their text form: a string key as itself, any other key as its JSON.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import lmdb

from edm_runner.errors import EdmError
from edm_runner.invocation import Invocation
from edm_runner.state.api import decode_json, encode_json
from edm_runner.state.keys import META, key_prefix, split_session_key, split_window_key
from edm_runner.state.task import (_CHECKPOINT, _STORE, MAX_STORES, META_DB, Checkpoint,
                                   service_dir)


@dataclass(frozen=True)
class Entry:
    """One stored value: ``start`` for window stores, ``start`` and ``end`` for sessions."""

    key: Any
    value: Any
    start: int | None = None
    end: int | None = None


@dataclass
class StoreStats:
    name: str
    type: str
    params: dict[str, Any]
    entries: int


@dataclass
class TaskStats:
    task: str
    path: Path
    size_bytes: int
    checkpoint: Checkpoint
    stores: list[StoreStats] = field(default_factory=list)


def key_text(key: Any) -> str:
    """How a key is shown and matched: a string as itself, anything else as JSON."""
    return key if isinstance(key, str) else json.dumps(key, ensure_ascii=False)


def _task_order(path: Path) -> tuple[int, int, int]:
    sub, _, part = path.name.partition("_")
    if sub.isdigit() and part.isdigit():
        return (0, int(sub), int(part))
    return (1, 0, 0)


def state_paths(state_dir: Path, service: str) -> list[Path]:
    """The task directories of ``service`` under ``state_dir`` (none if it never ran here)."""
    root = service_dir(state_dir, service)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=_task_order)


class TaskReader:
    """One task environment, opened read-only."""

    def __init__(self, path: Path, invocation: Invocation | None = None):
        self.path = path
        invocation = invocation or Invocation()
        self.task = path.name
        try:
            self._env = lmdb.open(str(path), readonly=True, max_dbs=MAX_STORES + 1, lock=True,
                                  readahead=False)
        except lmdb.Error as e:
            raise EdmError(f"the local state at {path} is unreadable ({e}); "
                           f"`{invocation.command('run')}` wipes and rebuilds it, or "
                           f"`{invocation.command('reset')}` deletes it") from e
        try:
            # Handles opened outside any transaction (py-lmdb drops those opened in a read one).
            meta = self._env.open_db(META_DB, create=False)
            self.definitions: dict[str, dict] = {}
            with self._env.begin(db=meta) as txn:
                raw = txn.get(_CHECKPOINT)
                self.checkpoint = Checkpoint.from_json(raw) if raw else Checkpoint()
                cur = txn.cursor()
                if cur.set_range(_STORE):
                    for k, v in cur:
                        if not k.startswith(_STORE):
                            break
                        self.definitions[k[len(_STORE):].decode()] = json.loads(v)
            self._dbs = {name: self._env.open_db(name.encode(), create=False)
                         for name in self.definitions}
        except (lmdb.Error, ValueError, TypeError, KeyError) as e:
            self._env.close()
            raise EdmError(f"the local state at {path} is unreadable ({e}); "
                           f"`{invocation.command('run')}` wipes and rebuilds it, or "
                           f"`{invocation.command('reset')}` deletes it") from e

    def has(self, store: str) -> bool:
        return store in self.definitions

    def _db(self, store: str) -> Any:
        return self._dbs[store]

    def _entries(self, store: str, lo: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The raw entries from ``lo`` on, without the operators' bookkeeping record (the
        reserved ``META`` key of window and session stores)."""
        hidden = self._bookkeeping(store)
        with self._env.begin(db=self._db(store)) as txn:
            cur = txn.cursor()
            if cur.set_range(lo):
                for k, v in cur:
                    if not (hidden and k.startswith(hidden)):
                        yield k, v

    def _bookkeeping(self, store: str) -> bytes:
        """The key prefix of ``store``'s bookkeeping record (b"" when its type has none)."""
        if self.definitions[store]["type"] in ("window", "session"):
            return key_prefix(encode_json(META))
        return b""

    def _decode(self, store: str, k: bytes, v: bytes) -> Entry:
        kind = self.definitions[store]["type"]
        if kind == "window":
            kb, start = split_window_key(k)
            return Entry(decode_json(kb), decode_json(v), start)
        if kind == "session":
            kb, start, end = split_session_key(k)
            return Entry(decode_json(kb), decode_json(v), start, end)
        return Entry(decode_json(k), decode_json(v))

    def get(self, store: str, key: Any) -> list[Entry]:
        """The value of ``key`` (every window or session of it in window/session stores)."""
        kb = encode_json(key)
        if self._bookkeeping(store) and key is META:
            return []
        if self.definitions[store]["type"] == "key_value":
            with self._env.begin(db=self._db(store)) as txn:
                v = txn.get(kb)
            return [] if v is None else [Entry(key, decode_json(v))]
        prefix = key_prefix(kb)
        out = []
        for k, v in self._entries(store, prefix):
            if not k.startswith(prefix):
                break
            out.append(self._decode(store, k, v))
        return out

    def scan(self, store: str, prefix: str = "") -> Iterator[Entry]:
        """Entries whose key text starts with ``prefix``, in stored order."""
        if self.definitions[store]["type"] == "key_value" and prefix:
            # Two tight ranges: string keys ("abc...) and keys whose JSON starts with the prefix.
            for lo in sorted({encode_json(prefix)[:-1], prefix.encode()}):
                for k, v in self._entries(store, lo):
                    if not k.startswith(lo):
                        break
                    entry = self._decode(store, k, v)
                    if key_text(entry.key).startswith(prefix):
                        yield entry
            return
        for k, v in self._entries(store):
            entry = self._decode(store, k, v)
            if key_text(entry.key).startswith(prefix):
                yield entry

    def stats(self) -> TaskStats:
        size = sum(f.stat().st_blocks * 512 for f in self.path.iterdir() if f.is_file())
        stats = TaskStats(self.task, self.path, size, self.checkpoint)
        with self._env.begin() as txn:
            for name, definition in sorted(self.definitions.items()):
                entries = txn.stat(self._db(name))["entries"]
                if hidden := self._bookkeeping(name):
                    cur = txn.cursor(self._db(name))
                    if cur.set_range(hidden) and cur.key().startswith(hidden):
                        entries -= 1  # one bookkeeping record per store
                stats.stores.append(StoreStats(name, definition.get("type", "?"),
                                               definition.get("params", {}), entries))
        return stats

    def close(self) -> None:
        self._env.close()


class OfflineState:
    """Every task environment of one service, read-only. Use ``open_readonly``."""

    def __init__(self, service: str, root: Path, tasks: list[TaskReader]):
        self.service = service
        self.root = root
        self.tasks = tasks

    def store_names(self) -> list[str]:
        return sorted({name for t in self.tasks for name in t.definitions})

    def _with(self, store: str) -> list[TaskReader]:
        tasks = [t for t in self.tasks if t.has(store)]
        if not tasks:
            raise EdmError(f"service {self.service!r} has no store {store!r} in {self.root} "
                           f"(stores: {', '.join(self.store_names()) or 'none'})")
        return tasks

    def get(self, store: str, key: Any) -> list[tuple[str, Entry]]:
        """(task, entry) of ``key`` in every task holding ``store`` (a key lives in one task)."""
        return [(t.task, e) for t in self._with(store) for e in t.get(store, key)]

    def scan(self, store: str, prefix: str = "") -> Iterator[tuple[str, Entry]]:
        for t in self._with(store):
            for e in t.scan(store, prefix):
                yield t.task, e

    def stats(self) -> list[TaskStats]:
        return [t.stats() for t in self.tasks]

    def close(self) -> None:
        for t in self.tasks:
            t.close()

    def __enter__(self) -> "OfflineState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_readonly(state_dir: Path, service: str, invocation: Invocation | None = None) -> OfflineState:
    """Open every task environment of ``service``; EdmError when there is none. Hints repeat
    ``invocation``."""
    root = service_dir(state_dir, service)
    paths = state_paths(state_dir, service)
    if not paths:
        raise EdmError(f"no local state for service {service!r} in {root}: it has not run with "
                       "this state directory (check --state-dir), or its state was reset")
    tasks: list[TaskReader] = []
    try:
        for p in paths:
            tasks.append(TaskReader(p, invocation))
    except BaseException:
        for t in tasks:
            t.close()
        raise
    return OfflineState(service, root, tasks)


def checkpointed_offsets(state_dir: Path, service: str) -> dict[tuple[int, int], int]:
    """Per task directory of ``service`` on disk, (sub-topology, partition) -> the sum of its
    checkpointed changelog offsets (how fresh its state is: the group's assignor prefers the
    member with the highest). Read-only LMDB opens: blocking, call it in a thread, before this
    process opens any task. Unreadable directories count as no state."""
    result: dict[tuple[int, int], int] = {}
    for path in state_paths(state_dir, service):
        sub, _, partition = path.name.partition("_")
        if not (sub.isdigit() and partition.isdigit()):
            continue  # the global tables' directory
        try:
            reader = TaskReader(path)
        except EdmError:
            continue
        try:
            result[int(sub), int(partition)] = sum(reader.checkpoint.changelogs.values())
        finally:
            reader.close()
    return result


def wipe(state_dir: Path, service: str) -> list[Path]:
    """Delete ``service``'s local state; returns the task directories removed. Refuses
    (EdmError) while a runner holds one of its tasks."""
    root = service_dir(state_dir, service)
    if not root.is_dir():
        return []
    removed = state_paths(state_dir, service)
    fds = []
    try:
        for lock_file in sorted(root.glob("*.lock")):
            fd = os.open(lock_file, os.O_RDWR)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise EdmError(f"service {service!r} is running with the state in {root} "
                                   f"(it holds {lock_file.name}); stop it before deleting its "
                                   "state") from e
                raise
        shutil.rmtree(root)
    finally:
        for fd in fds:
            os.close(fd)
    return removed
