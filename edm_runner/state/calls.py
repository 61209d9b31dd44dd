"""What the ``call`` steps of one service instance remember across restarts: the results of
completed calls past the committed offsets, and the use of each resource's quota in its
current period (docs/design/calls.md, "Replays").

Layout: ``<state_dir>/calls/<service>/``, one LMDB environment per instance (beside the
tasks' ``state/``, not in a task: a stateless pipeline has no task state, and the quota is
per instance). Databases:

- ``results``: key ``topic \\0 partition (4 bytes) offset (8 bytes) step``, value the
  remembered outcome (bytes the step encodes). Big-endian numbers, so a partition's entries
  sort by offset and ``forget_below`` is one cursor walk.
- ``quota``: key the resource's name, value JSON ``{"period_ms", "index", "used"}``.

Invariants:
- ``remember`` and ``count`` return only once their write is committed (and fsynced) to LMDB;
  the writes of everything queued meanwhile share one transaction (group commit), in a
  thread, so the event loop never waits on LMDB or the disk.
- ``result`` sees every entry ``remember`` was called for, written or still queued.
- ``forget_below`` is queued and written with the next group: forgetting is never urgent
  (an entry below the committed offset is not looked up again; ``edm reset`` drops them all,
  ``forget_results``).
- Size: an outcome larger than ``MAX_ENTRY`` bytes is not remembered (its call repeats after a
  crash); when the map (``MAP_SIZE``) is full the results are dropped, with a warning, and the
  write is done again: the memory saves calls, it is never needed for correctness. The quota
  counts stay.
- Several processes may open one environment (LMDB's own lock): instances sharing a state
  directory share its results (their partitions differ) and each resource's count.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import lmdb

from edm_runner.errors import EdmError

log = logging.getLogger("edm.calls")

MAP_SIZE = 256 << 20  # sparse: only the pages in use take disk space
MAX_ENTRY = 64 << 10  # bytes of one remembered outcome
_RESULTS = b"results"
_QUOTA = b"quota"


def calls_dir(state_dir: Path, service: str) -> Path:
    return Path(state_dir) / "calls" / service


def result_key(topic: str, partition: int, offset: int, step: str) -> bytes:
    """The entry of ``step``'s call for the event at ``topic``/``partition``/``offset``."""
    return _prefix(topic, partition) + offset.to_bytes(8, "big") + step.encode()


def _prefix(topic: str, partition: int) -> bytes:
    return topic.encode() + b"\0" + partition.to_bytes(4, "big")


class CallMemory:
    """The open memory of one service instance. ``await CallMemory.open(...)``; ``aclose`` it."""

    def __init__(self, path: Path, opened: tuple[lmdb.Environment, lmdb._Database, lmdb._Database]) -> None:
        self.path = path
        self.env, self.results, self.quota = opened
        self._puts: dict[bytes, bytes] = {}  # queued results
        self._writing: dict[bytes, bytes] = {}  # the results of the write under way
        self._forget: dict[bytes, int] = {}  # partition prefix -> forget the entries below this offset
        self._counts: dict[bytes, bytes] = {}  # queued quota counts (the latest per resource)
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, state_dir: Path, service: str) -> "CallMemory":
        path = calls_dir(state_dir, service)
        return cls(path, await asyncio.to_thread(_open_env, path))

    # -- reads (on the loop: a short read transaction, no disk wait beyond a page fault) ------

    def result(self, key: bytes) -> bytes | None:
        queued = self._puts.get(key) or self._writing.get(key)
        if queued is not None:
            return queued
        with self.env.begin(db=self.results) as txn:
            return txn.get(key)

    def quota_used(self, resource: str, period_ms: int) -> tuple[int, int] | None:
        """(period index, used) last counted for ``resource`` under periods of ``period_ms``."""
        name = resource.encode()
        raw = self._counts.get(name)
        if raw is None:
            with self.env.begin(db=self.quota) as txn:
                raw = txn.get(name)
        if raw is None:
            return None
        doc = json.loads(raw)
        return (doc["index"], doc["used"]) if doc.get("period_ms") == period_ms else None

    # -- writes (queued, committed together in a thread) -----------------------------------

    async def remember(self, key: bytes, outcome: bytes) -> None:
        """Remembers ``outcome`` under ``key``; returns once it is durable (or at once when it
        is larger than ``MAX_ENTRY``: not remembered)."""
        if len(outcome) > MAX_ENTRY:
            return
        self._puts[key] = outcome
        await self._written()

    async def count(self, resource: str, period_ms: int, index: int, used: int) -> None:
        """Records that ``used`` units of ``resource``'s period ``index`` are taken; returns
        once it is durable. Of the counts queued for one period, the highest is written."""
        name = resource.encode()
        queued = self._counts.get(name)
        if queued is None or json.loads(queued)["index"] != index or json.loads(queued)["used"] < used:
            self._counts[name] = json.dumps({"period_ms": period_ms, "index": index, "used": used}).encode()
        await self._written()

    def forget_below(self, topic: str, partition: int, offset: int) -> None:
        """Drops (with the next write) the entries of ``topic``/``partition`` below ``offset``."""
        prefix = _prefix(topic, partition)
        self._forget[prefix] = max(offset, self._forget.get(prefix, 0))

    def _written(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        return asyncio.shield(waiter)

    async def _write_loop(self) -> None:
        while self._waiters:
            puts, forget, counts, waiters = self._puts, self._forget, self._counts, self._waiters
            self._puts, self._forget, self._counts, self._waiters = {}, {}, {}, []
            self._writing = puts
            try:
                await asyncio.to_thread(self._write, puts, forget, counts)
            except Exception as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            except BaseException:  # cancelled: the loop is closing
                for w in waiters:
                    w.cancel()
                raise
            finally:
                self._writing = {}
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _write(self, puts: dict[bytes, bytes], forget: dict[bytes, int], counts: dict[bytes, bytes]) -> None:
        try:
            self._commit(puts, forget, counts)
        except lmdb.MapFullError:
            log.warning("the memory of completed calls at %s is full (%d MiB): dropping it; calls completed "
                        "past the committed offsets may be made again after a crash", self.path, MAP_SIZE >> 20)
            with self.env.begin(write=True) as txn:
                txn.drop(self.results, delete=False)
            self._commit(puts, {}, counts)
        except lmdb.Error as e:
            raise EdmError(f"writing the memory of completed calls at {self.path} failed: {e}") from e

    def _commit(self, puts: dict[bytes, bytes], forget: dict[bytes, int], counts: dict[bytes, bytes]) -> None:
        with self.env.begin(write=True) as txn:
            for prefix, below in forget.items():
                cur = txn.cursor(db=self.results)
                if not cur.set_range(prefix):
                    continue
                while True:
                    key = cur.key()
                    if not key.startswith(prefix) or int.from_bytes(key[len(prefix):len(prefix) + 8], "big") >= below:
                        break
                    if not cur.delete():
                        break
            if puts:
                txn.cursor(db=self.results).putmulti(sorted(puts.items()))
            for name, raw in counts.items():
                txn.put(name, raw, db=self.quota)

    async def aclose(self) -> None:
        """Waits for the queued writes, then closes the environment."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        await asyncio.to_thread(self.env.close)


def _open_env(path: Path) -> tuple[lmdb.Environment, lmdb._Database, lmdb._Database]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        return _env(path)
    except lmdb.Error as e:
        log.warning("the memory of completed calls at %s is unreadable (%s): starting it empty", path, e)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return _env(path)
    except OSError as e:
        raise EdmError(f"cannot create {path} (the memory of completed calls): {e.strerror}; "
                       "check --state-dir") from e


def _env(path: Path) -> tuple[lmdb.Environment, lmdb._Database, lmdb._Database]:
    # sync: a commit is on disk when it returns; no metasync: a machine crash may undo the
    # last commit (the calls of one group repeat), never break the environment.
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=2, sync=True, metasync=False, readahead=False)
    return env, env.open_db(_RESULTS), env.open_db(_QUOTA)


def forget_results(state_dir: Path, service: str) -> None:
    """Drops every remembered result of ``service`` (``edm reset``: the replay calls again);
    the quota counts stay, so the replay cannot exceed a quota either. Blocking."""
    path = calls_dir(state_dir, service)
    if not (path / "data.mdb").exists():
        return
    try:
        env, results, _ = _env(path)
    except lmdb.Error:  # unreadable: nothing in it can be kept
        shutil.rmtree(path)
        return
    try:
        with env.begin(write=True) as txn:
            txn.drop(results, delete=False)
    finally:
        env.close()
