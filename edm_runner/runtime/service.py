"""One running microservice: provisioning, the consume-process-produce loop, commits.

Invariants:
- How a batch's outputs, store updates and input offsets become durable, and in which order,
  is its ``runtime.checkpoint.Checkpointer``'s alone (one per guarantee, chosen once by what
  the broker can do); this module never asks which broker it runs on. Input offsets are
  committed only after the outputs of their batch are durable.
- A batch that fails under the ``fail`` policy sends nothing and commits nothing; the
  batches before it are flushed and committed before the error propagates, unless they
  share its store transactions (``Checkpointer.abort``).
- Per input partition, records are processed in offset order.
- A step that cannot go on for a while (``PauseTask``: a call's breaker open) ends its run at
  the lowest unfinished event: what was processed before it commits as usual, the task's input
  partitions are sought back and paused at the consumer until the step may try again
  (``runtime.pauses``); ``poll`` goes on meanwhile (group membership, other partitions).
- Stateful services (see ``runtime.tasks``): global tables are bootstrapped and every assigned
  task restored before the first batch; the copartitioning of joins is checked against the
  broker first.
- Under every guarantee, whatever is processed but not committed is committed within a commit
  interval even when no more input arrives (an idle ``poll`` commits when one is due).

Exactly-once (``processing.guarantee: exactly_once``): see ``runtime.eos`` (Kafka) and
``runtime.checkpoint.EmbeddedCheckpointer``; on both brokers a task whose local state was not
closed cleanly is wiped and restored (``state.clean_mark``).

Rebalancing (Kafka; see ``Rebalance``): a batch is processed under ``batch_lock``. On
revocation the runner waits for the batch in flight, then flushes, commits (outputs,
changelogs, checkpoints, input offsets) and closes every task, within ``REVOKE_TIMEOUT_S``.
On assignment the next ``poll`` restores the assigned tasks before it fetches, and records
fetched across a rebalance are never processed: their partitions are sought back to them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from edm_runner.brokers.base import Broker, Consumer, PartitionMismatchError, Record, TopicPartition, TopicSpec
from edm_runner.invocation import Invocation
from edm_runner.errors import BrokerError, InternalError, ProcessingError
from edm_runner import faults
from edm_runner.runtime.checkpoint import checkpointer
from edm_runner.runtime.assignment.assignor import EdmAssignor
from edm_runner.runtime.assignment.consumer import group_consumer
from edm_runner.runtime.copartition import check_copartitioning
from edm_runner.runtime.ordering import InputOrder, Run
from edm_runner.runtime.pauses import Pauses
from edm_runner.runtime.processing import CompiledService, PausedRun
from edm_runner.runtime.stats import ServiceStats
from edm_runner.runtime.tasks import GlobalTables, StandbyTasks, TaskManager, changelog_partitions, end_offsets
from edm_runner.state.offline import checkpointed_offsets
from edm_runner.language.model import Topology

log = logging.getLogger("edm.runtime")

# Bound on the revocation work (finish the batch, flush, commit, close); past it the group
# moves on without this member's last commit (its partitions are processed again: at-least-once).
REVOKE_TIMEOUT_S = 30.0


def topic_specs(topology: Topology, compiled: CompiledService) -> list[TopicSpec]:
    """Every declared stream (entity streams compacted) and every internal topic: repartition
    topics, and changelogs (compacted, one partition per task of their sub-topology)."""
    specs: dict[str, TopicSpec] = {}
    for s in topology.streams.values():
        config = dict(s.config)
        if s.retention_ms is not None:
            config.setdefault("retention.ms", str(s.retention_ms))
        specs[s.topic] = TopicSpec(s.topic, s.partitions, s.compacted, s.replication_factor, config)
    for topic, internal in compiled.dag.internal_topics.items():
        specs.setdefault(topic, TopicSpec(topic, internal.partitions))
    for topic, partitions in changelog_partitions(compiled).items():
        specs.setdefault(topic, TopicSpec(topic, partitions, compacted=True))
    return list(specs.values())


class ServiceRunner:
    """Consumes every source topic of one microservice in its consumer group (its name)."""

    def __init__(self, topology: Topology, broker: Broker, stats: ServiceStats,
                 state_dir: Path | None = None, invocation: Invocation | None = None) -> None:
        self.topology = topology
        self.broker = broker
        self.stats = stats
        self.invocation = (invocation or Invocation(str(topology.source_file))).for_service(topology.name)
        self.state_dir = state_dir = state_dir if state_dir is not None else topology.base_dir / ".edm"
        self.compiled = CompiledService(topology, stats, state_dir=state_dir)
        self.order = InputOrder(self.compiled.dag)
        self.internal = frozenset(self.compiled.dag.internal_topics)
        tasks = TaskManager(self.compiled, state_dir, stats, invocation)
        self.tasks = tasks if tasks.subs else None
        self.standbys = StandbyTasks(tasks) if tasks.subs else None
        self.globals = (GlobalTables(self.compiled, state_dir, stats, invocation)
                        if self.compiled.catalog.global_tables() else None)
        self.checkpoint = checkpointer(self.compiled, broker, self.tasks)
        self.broker = self.checkpoint.broker  # under exactly-once on Kafka: reads committed only
        self.consumer: Consumer | None = None
        self.assignor: EdmAssignor | None = None  # Kafka only: tasks and standbys of this member
        self.http_address: str | None = None  # the URL this instance serves HTTP at (runtime.view)
        self.last_commit = time.monotonic()
        self.batch_lock = asyncio.Lock()  # held while a batch is processed, sent, committed
        self.pauses = Pauses(topology.name)  # partitions paused by a step (a call's breaker open)
        self.rebalance = Rebalance(self)
        # starting -> running (the first assignment restored; later rebalances do not go back)
        # -> stopping -> stopped.
        self.phase = "starting"

    @property
    def name(self) -> str:
        return self.topology.name

    async def provision(self, create: bool = True) -> None:
        """Creates the missing topics, or (``create`` False) fails listing them. The topics that
        joins need copartitioned are checked first, so a mismatch names the joined streams."""
        await check_copartitioning(self.name, self.compiled.dag, self.broker, self._way_out)
        try:
            await self.broker.ensure_topics(topic_specs(self.topology, self.compiled), create=create)
        except PartitionMismatchError as error:
            raise BrokerError(f"{error}. To get out: {self._way_out(error.mismatches)}") from None
        written = sorted({s.topic for s in self.topology.streams.values()} | set(self.internal))
        self.compiled.timestamp_bounds.update(await self.broker.timestamp_bounds(written))
        if self.topology.processing.start == "latest":
            await self._start_at_end()

    async def _start_at_end(self) -> None:
        """``processing.start: latest``: commits, for the group, the current end offset of every
        input stream partition it has no committed offset for, before it joins; from then on it
        is an ordinary committed position (for the stateful tasks' seeks and exactly-once too).
        Tables read their whole source. Instances starting together: when a member is already
        alive, the offsets were set by it and this one leaves them alone."""
        dag = self.compiled.dag
        tables = {t for n in dag.sources() if n.pipeline.startswith("tables.") for t in n.topics}
        topics = sorted({t for n in dag.sources() if n.stream is not None for t in n.topics} - tables)
        if not topics:
            return
        committed = await self.broker.group_offsets(self.name, topics)
        counts = await self.broker.list_topics()
        fresh = [TopicPartition(t, p) for t in topics for p in range(counts.get(t, 0))
                 if TopicPartition(t, p) not in committed]
        if not fresh:
            return
        ends = await end_offsets(self.broker, fresh)
        try:
            await self.broker.set_group_offsets(self.name, ends)
        except BrokerError:
            if not await self.broker.group_alive(self.name):
                raise
            return
        log.info("%s starts at the end of its input streams (processing.start: latest): %s", self.name,
                 ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(ends.items())))

    def _way_out(self, mismatches: Mapping[str, tuple[int, int]]) -> str:
        """How to get past topics that exist with other partition counts (often another
        topology's topics of the same name on a shared broker)."""
        streams = {s.topic: s.name for s in self.topology.streams.values()}
        ways = []
        for topic in sorted(mismatches):
            name = streams.get(topic)
            if name is None:
                ways.append(f"'{topic}' is internal to service {self.name!r}: `{self.invocation.command('reset')}` "
                            "deletes it (with the service's state) and the next run recreates it")
            else:
                ways.append(f"give stream '{name}' a topic of its own (`topic: {self.name}-{name}` in its "
                            "declaration), declare the broker's partition count, or delete the topic "
                            "(its events are lost) and run again: "
                            f"`{self.invocation.command('topics', '--delete', topic)}`")
        return "; ".join(ways)

    async def start(self) -> None:
        """Bootstraps the global tables, joins the group and restores the assigned tasks."""
        if self.globals is not None:
            await self.globals.bootstrap(self.broker)
        topics = self.compiled.dag.source_topics()
        self.consumer, self.assignor = group_consumer(self.broker, self.topology, self.compiled.dag, topics,
                                                      self.rebalance, self.tasks, self.standbys, self.invocation)
        if self.assignor is not None:
            self.assignor.http_address = self.http_address  # rides in the member metadata of every join
        if self.assignor is not None and self.tasks is not None:
            # The assignor reports the local state at every join, on the loop: read it now.
            self.tasks.on_disk = await asyncio.to_thread(checkpointed_offsets, self.tasks.state_dir, self.name)
        await self.consumer.start()
        self.rebalance.pending = self.rebalance.revoking = False  # the first assignment: restored below
        # Before the restore: under exactly-once a task's producer fences its previous owner first.
        await self.checkpoint.open(self.consumer)
        await self.rebalance.adopt()
        self.phase = "running"

    async def poll(self, timeout_ms: int) -> int:
        """Fetch, process, write and (maybe) commit one batch; returns how many input
        records it held (0: nothing was available within ``timeout_ms``)."""
        if self.globals is not None:
            await self.globals.tail()
        if self.rebalance.pending:
            await self.rebalance.adopt()
        if self.standbys is not None and self.standbys.reader is not None:
            await self.standbys.tail()
        if self.pauses:
            self.pauses.resume_ready(self.consumer)
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms,
                                              max_records=self.topology.processing.max_batch)
        async with self.batch_lock:
            if self.rebalance.interrupted(fetched):
                return 0
            if not fetched and self.uncommitted and self._commit_due():
                # Idle input: the last batches are committed on the interval all the same, so
                # group lag, changelogs and standbys catch up, a crash in a quiet period
                # re-emits nothing, and under exactly-once the last outputs become visible.
                await self.commit()
                return 0
            return await self._process(fetched)

    async def _process(self, fetched: dict[TopicPartition, list[Record]]) -> int:
        tasks = self.tasks
        checkpoint = self.checkpoint
        if fetched:
            # Tasks new to the checkpoint (exactly-once: their producers first), then their restore.
            fetched, new = await checkpoint.admit(fetched)
            if new and tasks is not None:
                await tasks.assign(self.broker, self.consumer, new)
        if tasks is not None and fetched and tasks.missing(fetched):
            # Newly assigned partitions: restore their tasks first; the restore seeks their
            # inputs, so what was fetched for them is read again.
            new = tasks.missing(fetched)
            await tasks.assign(self.broker, self.consumer, self.consumer.assignment())
            fetched = {tp: records for tp, records in fetched.items() if tp not in new}
            self.order.drop(new)
        runs = await self.order.runs(fetched, self.consumer) if self.order.needed else list(fetched.items())
        if not runs:
            return 0
        compiled = self.compiled
        if compiled.driven_topics and checkpoint.dirty and any(tp.topic in compiled.driven_topics for tp, _ in runs):
            # Events awaited (an API call) may stay in flight for long: what was processed before
            # is committed first, so a crash repeats at most this fetch (docs/design/concurrency.md).
            await self.commit()
        outputs = compiled.outputs
        offsets: dict[TopicPartition, int] = {}
        count = 0
        done: list[tuple[TopicPartition, int]] = []  # records processed per run
        paused: set[TopicPartition] = set()  # their later runs in this batch are given up
        dead_before = self.stats.dead_lettered
        started = time.perf_counter()
        try:
            for i, (tp, records) in enumerate(runs):
                if tp in paused:
                    continue
                if tasks is not None:
                    tasks.bind(tp, records[-1].offset + 1)
                next_offset, n = records[-1].offset + 1, len(records)
                if tp.topic in compiled.driven_topics:  # a pipeline awaits per event (runtime.inflight)
                    stopped = await compiled.process_async(records)
                    if stopped is not None:
                        paused |= self._pause(tp, stopped, runs[i + 1:])
                        next_offset, n = stopped.next_offset, stopped.processed
                        if tasks is not None:
                            tasks.bind(tp, next_offset)
                else:
                    compiled.process(records)
                if self.pauses.since and tp not in paused:
                    self.pauses.went_on(tp)  # a partition paused before is processed again
                offsets[tp] = next_offset
                count += n
                done.append((tp, n))
                checkpoint.processed(tp, next_offset, len(outputs))
        except (ProcessingError, InternalError):
            outputs.clear()
            await checkpoint.abort()
            raise
        self.stats.processing.observe(time.perf_counter() - started)
        written = len(outputs) - (self.stats.dead_lettered - dead_before)
        if self.internal:  # the user's streams apart from the repartition topics
            internal_in = sum(n for tp, n in done if tp.topic in self.internal)
            internal_out = sum(1 for record in outputs if record.topic in self.internal)
            self.stats.internal_in += internal_in
            self.stats.internal_out += internal_out
            count_in, written = count - internal_in, written - internal_out
        else:
            count_in = count
        self.stats.events_in += count_in
        self.stats.events_out += written
        batch = outputs[:]
        outputs.clear()
        faults.reached("before_produce")
        started = time.perf_counter()
        if await checkpoint.write(batch, offsets):
            self.stats.commit.observe(time.perf_counter() - started)
        elif self._commit_due():
            await self.commit()
        return count

    def _pause(self, tp: TopicPartition, stopped: PausedRun, later: list[Run]) -> set[TopicPartition]:
        """A step paused ``tp``'s run (``PauseTask``): the input partitions of its task are
        sought back to their first record not processed (``tp``: the run's lowest unfinished
        event; the others: their first record in ``later`` runs of this batch or buffered in
        ``order``) and paused until the step may try again; returns them (their ``later`` runs
        are not processed). What was processed before stays, and commits as usual."""
        heads = self.order.release(tp) if self.order.needed else {tp: None}
        for other, records in later:
            if other in heads and other != tp:
                heads[other] = min(records[0].offset, heads[other] if heads[other] is not None else records[0].offset)
        heads[tp] = stopped.next_offset
        for member, offset in heads.items():
            if offset is not None:
                self.consumer.seek(member, offset)
        self.pauses.pause(self.consumer, list(heads), stopped.pause.until, str(stopped.pause))
        return set(heads)

    @property
    def uncommitted(self) -> bool:
        """True while processed input, or outputs or store updates of it, await ``commit``."""
        return self.checkpoint.dirty

    def _commit_due(self) -> bool:
        return (time.monotonic() - self.last_commit) * 1000 >= self.topology.processing.commit_interval_ms

    async def commit(self) -> None:
        """Makes what was processed durable and commits its input offsets (``Checkpointer.commit``)."""
        started = time.perf_counter()
        await self.checkpoint.commit()
        self.last_commit = time.monotonic()
        self.stats.commit.observe(time.perf_counter() - started)

    async def commit_now(self) -> None:
        """``commit`` outside ``poll`` (idle loops, shutdown): waits for a rebalance in progress."""
        async with self.batch_lock:
            await self.commit()

    async def caught_up(self) -> bool:
        """True when every assigned partition has been consumed to its end offset and
        processed (nothing waits in the timestamp-order buffers)."""
        if self.order.pending():
            return False
        tps = list(self.consumer.assignment())
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def close(self) -> None:
        self.phase = "stopping"
        self.pauses.close()
        try:
            await self.commit_now()
        finally:
            try:
                await self.checkpoint.close()
                if self.consumer is not None:
                    await self.consumer.close()
            finally:
                try:
                    if self.tasks is not None:
                        await self.tasks.close()
                    if self.standbys is not None:
                        await self.standbys.close()
                    if self.globals is not None:
                        await self.globals.close()
                    await self.compiled.aclose()
                finally:
                    self.phase = "stopped"


class Rebalance:
    """The rebalance listener of one ``ServiceRunner`` (a ``brokers.base.RebalanceListener``).

    Invariants: ``revoked`` runs under the runner's ``batch_lock``, so it never overlaps a
    batch; after it no task is open and nothing is pending. Between a revocation and the
    ``adopt`` of the next assignment (``pending``), fetched records are rewound, unprocessed.
    """

    def __init__(self, runner: ServiceRunner) -> None:
        self.runner = runner
        self.pending = False  # an assignment arrived; ``adopt`` has not restored it yet
        self.revoking = False  # revoked, and the next assignment not adopted yet

    async def revoked(self, tps: set[TopicPartition]) -> None:
        runner = self.runner
        self.revoking = True
        started = time.monotonic()
        try:
            async with runner.batch_lock:
                try:
                    await asyncio.wait_for(runner.commit(), REVOKE_TIMEOUT_S)
                except Exception as exc:
                    # The group moves on either way; what was not committed is processed again
                    # (a failed commit dropped the store updates and offsets it could not commit).
                    log.warning("%s: committing before the rebalance failed (%s); uncommitted "
                                "input is processed again by the partitions' next owner", runner.name, exc)
                runner.order.drop(tps)
                runner.pauses.forget(tps)
                if runner.tasks is not None:
                    await runner.tasks.close()
        except BaseException:
            log.exception("%s: releasing revoked partitions failed", runner.name)
            raise
        if tps:
            log.info("%s: revoked %d partition(s); committed and closed in %.3f s", runner.name,
                     len(tps), time.monotonic() - started)

    async def assigned(self, tps: set[TopicPartition]) -> None:
        # No restore here: aiokafka resumes heartbeats only after this returns.
        self.pending = True
        self.runner.stats.rebalances += 1

    async def adopt(self) -> None:
        """Restores the tasks of the current assignment (before anything of them is fetched
        for processing: ``interrupted`` rewinds what the restore did not seek)."""
        runner = self.runner
        async with runner.batch_lock:
            self.pending = False
            self.revoking = False
            started = time.monotonic()
            assignment = runner.consumer.assignment()
            if runner.tasks is not None:
                if runner.standbys is not None and runner.assignor is not None:
                    # Standbys first: a promoted one releases its state to the active task,
                    # which then restores only the changelog delta past its checkpoint.
                    current = runner.assignor.current
                    await runner.standbys.sync(runner.broker, current.standby if current else (),
                                               runner.tasks.active_ids(assignment))
                await runner.tasks.assign(runner.broker, runner.consumer, assignment)
            log.info("%s: assigned %d partition(s); processing after %.3f s of restore", runner.name,
                     len(assignment), time.monotonic() - started)

    def interrupted(self, fetched: dict[TopicPartition, list[Record]]) -> bool:
        """True (and ``fetched`` rewound) when a rebalance happened while fetching."""
        if not (self.pending or self.revoking):
            return False
        consumer = self.runner.consumer
        assignment = consumer.assignment()
        for tp, records in fetched.items():
            if tp in assignment:
                consumer.seek(tp, records[0].offset)
        return True
