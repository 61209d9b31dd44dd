"""The checkpoint: one commit path per guarantee, each the one owner of its order.

A service's batches leave three things behind: outputs (with the stores' changelog records),
store updates (the tasks' store transactions, ``state.transaction``) and input offsets. A
``Checkpointer`` makes them durable in the one order that keeps its guarantee, and knows what
to drop when a batch fails. ``ServiceRunner`` calls it and never asks which broker it runs on;
``checkpointer`` chooses the implementation once, by what the broker declares it can do
(``Broker.atomic_append``, ``Broker.transactions``):

- ``EmbeddedCheckpointer`` (the embedded broker, both guarantees): per batch, outputs,
  changelog records and group offsets in one ``append_and_commit``, then the store write.
- ``AtLeastOnceCheckpointer`` (Kafka, at-least-once): outputs are sent per batch; every commit
  interval the changelog records are sent, the producer flushed, the stores written (with the
  changelog end offsets), then the input offsets committed.
- ``runtime.eos.KafkaTransactions`` (Kafka, exactly-once): per task, outputs, changelog records
  and input offsets in one Kafka transaction; the stores written after it committed.

Invariants (every implementation):
- produce -> flush -> store write -> offset commit: a store is written only once its changelog
  records (and the outputs before them) are durable, and input offsets are committed only once
  the stores reflecting them are written. Crash points ``after_produce`` (durable, stores not
  written) and ``store_write`` (inside the LMDB transaction) sit between the steps.
- ``abort`` (a batch failed under ``fail``): nothing of the batch is sent, written or committed;
  nor is anything that shares its store transactions (the uncommitted batches before it, whose
  updates are in the same buffers); what does not (stateless outputs before it) is committed.
- A failed ``commit`` or ``write`` drops the uncommitted store updates and forgets the
  uncommitted offsets before it raises: nothing is retried, the inputs are processed again
  after a restart (and restore seeks past what the changelog already holds).
- ``dirty`` is True while anything processed awaits ``commit``.
"""
from __future__ import annotations

from typing import Protocol, cast

from edm_runner import faults
from edm_runner.brokers.base import AtomicAppendBroker, Broker, Consumer, OutRecord, Producer, Record, TopicPartition
from edm_runner.errors import EdmError
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.tasks import TaskManager

Fetched = dict[TopicPartition, list[Record]]


class Checkpointer(Protocol):
    """The commit path of one service instance (see the module docstring). Per batch the
    runner calls ``admit``, ``processed`` for each input partition's run, then ``write`` (or
    ``abort``); ``commit`` when ``dirty`` and the commit interval is due, and on revocation and
    shutdown."""

    broker: Broker
    """The broker the service reads through (under exactly-once: read committed only)."""

    @property
    def dirty(self) -> bool: ...

    async def open(self, consumer: Consumer) -> None:
        """After the group consumer started, before the first assignment is restored."""

    async def admit(self, fetched: Fetched) -> tuple[Fetched, set[TopicPartition]]:
        """The records to process now, and the partitions whose tasks are new and must be
        restored first (their records are fetched again)."""

    def processed(self, tp: TopicPartition, next_offset: int, outputs_end: int) -> None:
        """``tp`` was processed up to ``next_offset``; its outputs end at ``outputs_end``."""

    async def write(self, batch: list[OutRecord], offsets: dict[TopicPartition, int]) -> bool:
        """The outputs of a processed batch and the next offsets of its inputs. True when this
        committed the batch (nothing of it is left for ``commit``)."""

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...

    async def close(self) -> None: ...


def checkpointer(compiled: CompiledService, broker: Broker, tasks: TaskManager | None) -> Checkpointer:
    """The commit path of ``compiled``'s service on ``broker``, by what the broker can do."""
    topology = compiled.topology
    if broker.atomic_append:
        return EmbeddedCheckpointer(topology.name, cast(AtomicAppendBroker, broker), tasks)
    if topology.processing.guarantee == "exactly_once":
        if not broker.transactions:
            raise EdmError(f"service {topology.name!r}: processing.guarantee exactly_once needs a broker with "
                           f"transactions, and {broker.describe()} has none; use guarantee at_least_once")
        from edm_runner.runtime.eos import KafkaTransactions  # loads aiokafka: only when needed

        return KafkaTransactions(compiled, broker, tasks)
    return AtLeastOnceCheckpointer(broker, tasks)


class EmbeddedCheckpointer:
    """Per batch: outputs, changelog records and group offsets in one ``append_and_commit``
    (both guarantees: it is exactly-once), then the touched tasks' stores. A crash between the
    two leaves the stores behind their changelog; restore catches them up."""

    dirty = False  # every batch is committed as it is written

    def __init__(self, group: str, broker: AtomicAppendBroker, tasks: TaskManager | None) -> None:
        self.group = group
        self.broker = broker
        self.tasks = tasks

    async def open(self, consumer: Consumer) -> None:
        pass

    async def admit(self, fetched: Fetched) -> tuple[Fetched, set[TopicPartition]]:
        return fetched, set()

    def processed(self, tp: TopicPartition, next_offset: int, outputs_end: int) -> None:
        pass

    async def write(self, batch: list[OutRecord], offsets: dict[TopicPartition, int]) -> bool:
        tasks = self.tasks
        try:
            if tasks is not None:
                batch += tasks.changelog_records()
            ends = await self.broker.append_and_commit(batch, self.group, offsets)
            faults.reached("after_produce")
            if tasks is not None:
                await tasks.commit(ends)
        except BaseException:
            if tasks is not None:
                tasks.abort()
            raise
        return True

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        if self.tasks is not None:
            self.tasks.abort()

    async def close(self) -> None:
        pass


class AtLeastOnceCheckpointer:
    """Outputs are sent as batches are processed; ``commit`` sends the changelog records,
    flushes, writes the stores (their checkpoints naming the changelog end offsets after the
    flush), then commits the input offsets. Store buffers span the commit interval."""

    def __init__(self, broker: Broker, tasks: TaskManager | None) -> None:
        self.broker = broker
        self.tasks = tasks
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.pending: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.unflushed = False  # records sent since the last flush

    @property
    def dirty(self) -> bool:
        return bool(self.pending) or self.unflushed or (self.tasks is not None and bool(self.tasks.touched))

    async def open(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.producer = self.broker.producer()
        await self.producer.start()

    async def admit(self, fetched: Fetched) -> tuple[Fetched, set[TopicPartition]]:
        return fetched, set()

    def processed(self, tp: TopicPartition, next_offset: int, outputs_end: int) -> None:
        pass

    async def write(self, batch: list[OutRecord], offsets: dict[TopicPartition, int]) -> bool:
        send = self.producer.send
        for record in batch:
            send(record)
        self.pending.update(offsets)
        self.unflushed = self.unflushed or bool(batch)
        return False

    async def commit(self) -> None:
        tasks = self.tasks
        try:
            if self.producer is not None:
                touched = tasks is not None and bool(tasks.touched)
                if touched:
                    for record in tasks.changelog_records():
                        self.producer.send(record)
                await self.producer.flush()
                self.unflushed = False
                if touched:
                    faults.reached("after_produce")
                    await tasks.commit(await self.consumer.end_offsets(tasks.touched_changelogs()))
            if self.pending:
                await self.consumer.commit(self.pending)
                self.pending = {}
        except BaseException:
            if tasks is not None:
                tasks.abort()
            self.pending = {}
            raise

    async def abort(self) -> None:
        # The store updates of the uncommitted batches before this one are in the same buffers:
        # commit none of their offsets either (they are processed again on restart). Stateless,
        # the batches before it are flushed and committed.
        if self.tasks is not None:
            self.tasks.abort()
            self.pending = {}
        await self.commit()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.close()
