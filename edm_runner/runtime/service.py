"""One running microservice: provisioning, the consume-process-produce loop, commits.

Invariants (at-least-once):
- Input offsets are committed only after the outputs of their batch are durable: on the
  local broker both go in one LMDB transaction (``append_and_commit``); elsewhere outputs
  are flushed before the offsets are committed (every ``commit_interval_ms``).
- A batch that fails under the ``fail`` policy sends nothing and commits nothing; the
  batches before it are flushed and committed before the error propagates.
- Per input partition, records are processed in offset order.
- Stateful services (see ``runtime.tasks``): global tables are bootstrapped and every assigned
  task restored before the first batch; the copartitioning of joins is checked against the
  broker first. The stores of a batch's tasks are written (with their checkpoint) only after
  the batch's outputs and changelog records are durable; on the local broker that is right
  after ``append_and_commit``, on Kafka at every commit, after the flush and before the
  input offsets are committed. A failed batch drops the buffered store updates.
"""
from __future__ import annotations

import time
from pathlib import Path

from edm_runner.brokers.base import Broker, Consumer, Producer, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.errors import ProcessingError
from edm_runner.runtime import faults
from edm_runner.runtime.copartition import check_copartitioning
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.stats import ServiceStats
from edm_runner.runtime.tasks import GlobalTables, TaskManager, changelog_partitions
from edm_runner.spec.model import Topology


def topic_specs(topology: Topology, compiled: CompiledService) -> list[TopicSpec]:
    """Every declared stream (entity streams compacted) and every internal topic: repartition
    topics, and changelogs (compacted, one partition per task of their sub-topology)."""
    specs: dict[str, TopicSpec] = {}
    for s in topology.streams.values():
        config = dict(s.config)
        if s.retention_ms is not None:
            config.setdefault("retention.ms", str(s.retention_ms))
        specs[s.topic] = TopicSpec(s.topic, s.partitions, s.compacted, s.replication_factor, config)
    for topic, partitions in compiled.dag.internal_topics.items():
        specs.setdefault(topic, TopicSpec(topic, partitions))
    for topic, partitions in changelog_partitions(compiled).items():
        specs.setdefault(topic, TopicSpec(topic, partitions, compacted=True))
    return list(specs.values())


class ServiceRunner:
    """Consumes every source topic of one microservice in its consumer group (its name)."""

    def __init__(self, topology: Topology, broker: Broker, stats: ServiceStats,
                 state_dir: Path | None = None) -> None:
        self.topology = topology
        self.broker = broker
        self.stats = stats
        self.compiled = CompiledService(topology, stats)
        state_dir = state_dir if state_dir is not None else topology.base_dir / ".edm"
        tasks = TaskManager(self.compiled, state_dir, stats)
        self.tasks = tasks if tasks.subs else None
        self.globals = GlobalTables(self.compiled, state_dir, stats) if self.compiled.catalog.global_tables() else None
        self.local = broker if isinstance(broker, LocalBroker) else None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.pending: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.unflushed = False  # records sent since the last flush
        self.last_commit = time.monotonic()

    @property
    def name(self) -> str:
        return self.topology.name

    async def provision(self, create: bool = True) -> None:
        """Creates the missing topics, or (``create`` False) fails listing them. The topics that
        joins need copartitioned are checked first, so a mismatch names the joined streams."""
        await check_copartitioning(self.name, self.compiled.dag, self.broker)
        await self.broker.ensure_topics(topic_specs(self.topology, self.compiled), create=create)

    async def start(self) -> None:
        """Bootstraps the global tables, joins the group and restores the assigned tasks."""
        if self.globals is not None:
            await self.globals.bootstrap(self.broker)
        topics = self.compiled.dag.source_topics()
        self.consumer = self.broker.consumer(self.name, topics)
        await self.consumer.start()
        if self.tasks is not None:
            await self.tasks.assign(self.broker, self.consumer, self.consumer.assignment())
        if self.local is None:
            self.producer = self.broker.producer()
            await self.producer.start()

    async def poll(self, timeout_ms: int) -> int:
        """Fetch, process, write and (maybe) commit one batch; returns how many input
        records it held (0: nothing was available within ``timeout_ms``)."""
        if self.globals is not None:
            await self.globals.tail()
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms,
                                              max_records=self.topology.processing.max_batch)
        tasks = self.tasks
        if tasks is not None and fetched and tasks.missing(fetched):
            # Newly assigned partitions: restore their tasks first; the restore seeks their
            # inputs, so what was fetched for them is read again.
            new = tasks.missing(fetched)
            await tasks.assign(self.broker, self.consumer, self.consumer.assignment())
            fetched = {tp: records for tp, records in fetched.items() if tp not in new}
        if not fetched:
            return 0
        compiled = self.compiled
        outputs = compiled.outputs
        offsets: dict[TopicPartition, int] = {}
        count = 0
        dead_before = self.stats.dead_lettered
        try:
            for tp, records in fetched.items():
                if tasks is not None:
                    tasks.bind(tp, records[-1].offset + 1)
                compiled.process(records)
                offsets[tp] = records[-1].offset + 1
                count += len(records)
        except ProcessingError:
            outputs.clear()
            if tasks is not None:
                # Updates of earlier, uncommitted batches are in the same buffers: commit
                # none of their offsets either (they are processed again on restart).
                tasks.abort()
                self.pending = {}
            await self.commit()
            raise
        self.stats.events_in += count
        self.stats.events_out += len(outputs) - (self.stats.dead_lettered - dead_before)
        batch = outputs[:]
        outputs.clear()
        faults.reached("before_produce")
        if self.local is not None:
            if tasks is not None:
                batch += tasks.changelog_records()
            ends = await self.local.append_and_commit(batch, self.name, offsets)
            faults.reached("after_produce")
            if tasks is not None:
                tasks.commit(ends)
            return count
        send = self.producer.send
        for record in batch:
            send(record)
        self.unflushed = self.unflushed or bool(batch)
        self.pending.update(offsets)
        if (time.monotonic() - self.last_commit) * 1000 >= self.topology.processing.commit_interval_ms:
            await self.commit()
        return count

    async def commit(self) -> None:
        """Flush what was sent, then commit the offsets of the batches behind it."""
        tasks = self.tasks
        if self.producer is not None:
            if tasks is not None and tasks.touched:
                for record in tasks.changelog_records():
                    self.producer.send(record)
            await self.producer.flush()
            self.unflushed = False
            if tasks is not None and tasks.touched:
                faults.reached("after_produce")
                tasks.commit(await self.consumer.end_offsets(tasks.touched_changelogs()))
        if self.pending:
            await self.consumer.commit(self.pending)
            self.pending = {}
        self.last_commit = time.monotonic()

    async def caught_up(self) -> bool:
        """True when every assigned partition has been consumed to its end offset."""
        tps = list(self.consumer.assignment())
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def close(self) -> None:
        try:
            await self.commit()
        finally:
            try:
                if self.producer is not None:
                    await self.producer.close()
                if self.consumer is not None:
                    await self.consumer.close()
            finally:
                if self.tasks is not None:
                    self.tasks.close()
                if self.globals is not None:
                    await self.globals.close()
