"""What the request-response side (``edm_runner.serve``) sees of a running service: a small,
read-only interface over one ``ServiceRunner``, so serve never reaches into the runtime's
internals (docs/design/http.md).

Invariants:
- Nothing here changes what the runner does; the only write is ``advertise`` (the URL this
  instance answers at), before the runner starts: it rides in the group member metadata.
- ``local`` returns a ``StoreQuery`` only over an environment that is open; the runtime detaches
  a task from ``TaskManager.tasks``/``restoring``, ``StandbyTasks.tasks`` and ``GlobalTables.state``
  on the event loop before it closes it, so a query used synchronously (no ``await`` between
  ``local`` and the reads) never meets a closed environment.
- ``routing`` is the task placement as of the last assignment this member received: on the
  embedded broker one member owns every task, so everything is local.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping

from edm_runner.brokers.base import Producer, TopicPartition
from edm_runner.language.model import HttpSpec, SerdeSpec, StoreType, Topology
from edm_runner.runtime.assignment.assignor import default_instance_id
from edm_runner.runtime.stats import ServiceStats
from edm_runner.state.query import StoreQuery

if TYPE_CHECKING:
    from edm_runner.runtime.service import ServiceRunner

TaskId = tuple[int, int]
Role = Literal["active", "standby", "restoring", "global"]


@dataclass(frozen=True)
class Lag:
    """``records`` behind the end of a partition; ``seconds``: the age of the oldest record
    not committed yet (now minus its timestamp), 0 when ``records`` is 0, None when unknown."""

    records: int
    seconds: float | None


@dataclass(frozen=True)
class Routing:
    """Who holds each task. ``owners``: task -> instance id of its active; ``standbys``: task ->
    instance ids keeping a standby; ``hosts``: instance id -> advertised URL (None: it serves no
    HTTP). ``generation`` grows with every assignment this member receives."""

    instance_id: str
    generation: int
    owners: Mapping[TaskId, str]
    standbys: Mapping[TaskId, tuple[str, ...]]
    hosts: Mapping[str, str | None]


@dataclass(frozen=True)
class ServedStore:
    """A store, table or global table of the service as queries see it. ``subtopology`` None:
    a global table (every instance holds all of it). ``partitions``: its tasks. ``key``: the
    key format of the records that feed it, which decides a key's partition (murmur2 of the key
    in that format, as producers compute it)."""

    name: str
    kind: StoreType
    subtopology: int | None
    partitions: int
    key: SerdeSpec
    window_size_ms: int | None = None  # window stores: a window's length (its end = start + size)


@dataclass(frozen=True)
class LocalStore:
    """A store of one partition held here. ``changelog``: the partition whose offsets its
    checkpoint counts (None: a global table or a store without changelog). ``behind``: for a
    copy being restored, the offsets of its changelog (or table source) it has yet to apply."""

    query: StoreQuery
    role: Role
    checkpointed: int | None
    changelog: TopicPartition | None
    behind: int | None = None


class ServiceView:
    """The read-only face of one running service (see the module invariants)."""

    def __init__(self, runner: ServiceRunner) -> None:
        self._runner = runner
        compiled = runner.compiled
        topology = runner.topology
        self.instance_id = topology.processing.instance_id or default_instance_id()
        self._stores: dict[str, ServedStore] = {}
        for use in compiled.catalog.uses.values():
            if use.subtopology is None:
                key = topology.streams[topology.global_tables[use.name].source].key
                self._stores[use.name] = ServedStore(use.name, use.type, None, 1, key)
                continue
            sub = compiled.dag.subtopologies[use.subtopology]
            if use.name in topology.tables:
                key = topology.streams[topology.tables[use.name].source].key
            else:
                key = next(node.serdes[0] for node in (compiled.dag.nodes[n] for n in sub.nodes)
                           if node.kind == "source" and node.serdes is not None)
            self._stores[use.name] = ServedStore(use.name, use.type, sub.id, sub.tasks, key,
                                                 use.params.get("size") if use.type == "window" else None)
        self._changelogs = {use.name: use.changelog for use in compiled.catalog.uses.values()}
        self._alone: Routing | None = None  # the embedded broker's placement (one member)

    @property
    def name(self) -> str:
        return self._runner.name

    @property
    def topology(self) -> Topology:
        return self._runner.topology

    @property
    def http(self) -> HttpSpec | None:
        return self._runner.topology.http

    def advertise(self, url: str) -> None:
        """The URL other instances reach this one at; call it before the runner starts."""
        self._runner.http_address = url

    def store(self, name: str) -> ServedStore | None:
        return self._stores.get(name)

    def routing(self) -> Routing | None:
        """The current placement; None while no assignment has been received."""
        runner = self._runner
        assignor = runner.assignor
        if assignor is None:  # the embedded broker: one member, every task
            if self._alone is None:  # fixed once the runner started (the URL is advertised before)
                tasks = {(sub.id, p): self.instance_id for sub in runner.compiled.dag.subtopologies
                         for p in range(sub.tasks)}
                self._alone = Routing(self.instance_id, 1, tasks, {}, {self.instance_id: runner.http_address})
            return self._alone
        current = assignor.current
        if current is None:
            return None
        return Routing(current.instance_id, current.generation, current.owners, current.standbys, current.hosts)

    @property
    def rebalancing(self) -> bool:
        """True between a revocation or an assignment and the end of its restore."""
        rebalance = self._runner.rebalance
        return rebalance.pending or rebalance.revoking

    def local(self, store: str, partition: int) -> LocalStore | None:
        """``store``'s data of ``partition`` if this instance holds it open, else None. A global
        table's partition is ignored (every instance holds all of it)."""
        served = self._stores.get(store)
        if served is None:
            return None
        runner = self._runner
        if served.subtopology is None:
            state = runner.globals.state if runner.globals is not None else None
            return None if state is None else LocalStore(state.query(store), "global", None, None)
        key = (served.subtopology, partition)
        changelog = self._changelogs.get(store)
        tp = TopicPartition(changelog, partition) if changelog is not None else None
        for role, tasks in (("active", runner.tasks.tasks if runner.tasks else {}),
                            ("restoring", runner.tasks.restoring if runner.tasks else {}),
                            ("standby", runner.standbys.tasks if runner.standbys else {})):
            task = tasks.get(key)
            if task is not None:
                checkpointed = task.state.checkpoint().changelogs.get(tp) if tp is not None else None
                restore = runner.stats.restores.get((store, task.id)) if role == "restoring" else None
                behind = None if restore is None else max(0, restore.total - restore.done)
                return LocalStore(task.state.query(store), role, checkpointed, tp, behind)  # type: ignore[arg-type]
        return None

    async def changelog_end(self, tp: TopicPartition) -> int | None:
        """The end offset of a changelog partition a standby here tails (a broker round trip),
        None when unknown."""
        standbys = self._runner.standbys
        reader = standbys.reader if standbys is not None else None
        if reader is None or tp not in standbys.stores:
            return None
        try:
            return (await reader.end_offsets([tp])).get(tp)
        except Exception:  # the lag is a hint for stale reads: never fail the read for it
            return None

    # -- metrics, readiness and ingestion (serve.metrics, serve.ready, serve.ingest) ---------

    @property
    def stats(self) -> ServiceStats:
        """The service's counters (read-only for serve)."""
        return self._runner.stats

    @property
    def phase(self) -> str:
        """starting (no first assignment restored yet), running, stopping, stopped."""
        return self._runner.phase

    @property
    def state_dir(self) -> Path:
        """The root of the instance's local state (``--state-dir``)."""
        return self._runner.state_dir

    def producer(self) -> Producer:
        """A new producer on the service's broker (not started): acks=all, idempotent on Kafka."""
        return self._runner.broker.producer()

    def task_counts(self) -> dict[str, int]:
        """Tasks held here by role: active, restoring, standby."""
        runner = self._runner
        tasks, standbys = runner.tasks, runner.standbys
        return {"active": len(tasks.tasks) if tasks is not None else 0,
                "restoring": len(tasks.restoring) if tasks is not None else 0,
                "standby": len(standbys.tasks) if standbys is not None else 0}

    async def lag(self) -> dict[TopicPartition, Lag]:
        """The consumer lag of every partition assigned here (empty before the group is joined):
        end offset (the last stable one under exactly-once) minus the group's committed offset,
        and the age of the first record not committed (read with a group-less reader of just
        the lagging partitions)."""
        runner = self._runner
        consumer = runner.consumer
        if consumer is None or runner.phase not in ("running", "starting"):
            return {}
        tps = sorted(consumer.assignment())
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        committed = await runner.broker.group_offsets(runner.name, sorted({tp.topic for tp in tps}))
        behind = {tp: max(0, ends[tp] - committed.get(tp, 0)) for tp in tps}
        lagging = {tp: committed.get(tp, 0) for tp, n in behind.items() if n > 0}
        ages = await self._oldest_ages(lagging) if lagging else {}
        return {tp: Lag(n, ages.get(tp) if n else 0.0) for tp, n in behind.items()}

    async def _oldest_ages(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, float]:
        """Per partition, now minus the timestamp of the record at ``positions[tp]``."""
        broker = self._runner.broker
        reader = broker.consumer(None, sorted({tp.topic for tp in positions}), partitions=sorted(positions))
        await reader.start()
        try:
            for tp, offset in positions.items():
                reader.seek(tp, offset)
            ages: dict[TopicPartition, float] = {}
            while len(ages) < len(positions):
                fetched = await reader.getmany(timeout_ms=500, max_records=len(positions) * 10)
                if not fetched:
                    break
                now_ms = time.time() * 1000
                for tp, records in fetched.items():
                    if tp not in ages and records:
                        ages[tp] = max(0.0, now_ms - records[0].timestamp_ms) / 1000
            return ages
        finally:
            await reader.close()

    def store_sizes(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(store, task, role) -> (entries, bytes) of the stores open here, as committed (read
        synchronously: no task closes meanwhile, see the module invariants)."""
        runner = self._runner
        out: dict[tuple[str, str, str], tuple[int, int]] = {}
        for role, tasks in (("active", runner.tasks.tasks if runner.tasks else {}),
                            ("standby", runner.standbys.tasks if runner.standbys else {})):
            for task in tasks.values():
                for store, size in task.state.sizes().items():
                    out[(store, task.id, role)] = size
        if runner.globals is not None and runner.globals.state is not None:
            for store, size in runner.globals.state.sizes().items():
                out[(store, "global", "global")] = size
        return out
