"""One running microservice: provisioning, the consume-process-produce loop, commits.

Invariants (at-least-once):
- Input offsets are committed only after the outputs of their batch are durable: on the
  local broker both go in one LMDB transaction (``append_and_commit``); elsewhere outputs
  are flushed before the offsets are committed (every ``commit_interval_ms``).
- A batch that fails under the ``fail`` policy sends nothing and commits nothing; the
  batches before it are flushed and committed before the error propagates.
- Per input partition, records are processed in offset order.
"""
from __future__ import annotations

import time

from edm_runner.brokers.base import Broker, Consumer, Producer, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.errors import ProcessingError
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.stats import ServiceStats
from edm_runner.spec.model import Topology


def topic_specs(topology: Topology, compiled: CompiledService) -> list[TopicSpec]:
    """Every declared stream (entity streams compacted) and every internal topic."""
    specs: dict[str, TopicSpec] = {}
    for s in topology.streams.values():
        config = dict(s.config)
        if s.retention_ms is not None:
            config.setdefault("retention.ms", str(s.retention_ms))
        specs[s.topic] = TopicSpec(s.topic, s.partitions, s.compacted, s.replication_factor, config)
    for node in compiled.dag.sinks():
        if node.step is not None and "name" in node.step.config:
            topic = node.topics[0]
            specs.setdefault(topic, TopicSpec(topic, node.step.config["partitions"]))
    return list(specs.values())


class ServiceRunner:
    """Consumes every source topic of one microservice in its consumer group (its name)."""

    def __init__(self, topology: Topology, broker: Broker, stats: ServiceStats) -> None:
        self.topology = topology
        self.broker = broker
        self.stats = stats
        self.compiled = CompiledService(topology, stats)
        self.local = broker if isinstance(broker, LocalBroker) else None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.pending: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.unflushed = False  # records sent since the last flush
        self.last_commit = time.monotonic()

    @property
    def name(self) -> str:
        return self.topology.name

    async def provision(self) -> None:
        await self.broker.ensure_topics(topic_specs(self.topology, self.compiled))

    async def start(self) -> None:
        topics = self.compiled.dag.source_topics()
        self.consumer = self.broker.consumer(self.name, topics)
        await self.consumer.start()
        if self.local is None:
            self.producer = self.broker.producer()
            await self.producer.start()

    async def poll(self, timeout_ms: int) -> int:
        """Fetch, process, write and (maybe) commit one batch; returns how many input
        records it held (0: nothing was available within ``timeout_ms``)."""
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms,
                                              max_records=self.topology.processing.max_batch)
        if not fetched:
            return 0
        compiled = self.compiled
        outputs = compiled.outputs
        offsets: dict[TopicPartition, int] = {}
        count = 0
        dead_before = self.stats.dead_lettered
        try:
            for tp, records in fetched.items():
                compiled.process(records)
                offsets[tp] = records[-1].offset + 1
                count += len(records)
        except ProcessingError:
            outputs.clear()
            await self.commit()
            raise
        self.stats.events_in += count
        self.stats.events_out += len(outputs) - (self.stats.dead_lettered - dead_before)
        batch = outputs[:]
        outputs.clear()
        if self.local is not None:
            await self.local.append_and_commit(batch, self.name, offsets)
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
        if self.producer is not None:
            await self.producer.flush()
            self.unflushed = False
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
            if self.producer is not None:
                await self.producer.close()
            if self.consumer is not None:
                await self.consumer.close()
