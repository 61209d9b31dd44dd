"""The exactly-once commit path (``processing: {guarantee: exactly_once}``).

On Kafka (``KafkaTransactions``): every task ``(sub-topology, partition)`` of the instance has
its own transactional producer (``brokers.kafka_eos``). The outputs a task's input records
produced, its changelog records and its input offsets go into that producer's transaction;
``commit`` commits every task's transaction, then writes the task's stores and checkpoint
(one LMDB transaction per task, as at-least-once). The group consumer and every restore reader
read committed only, so aborted or open transactions are never processed nor restored.

On the local broker exactly-once is what ``append_and_commit`` already gives
(``runtime.checkpoint.EmbeddedCheckpointer``, the same for both guarantees): a batch's outputs,
changelog records and group offsets are appended in one LMDB transaction of the broker, and the
stores are written after it; a crash in between leaves the stores behind their changelog, and
restore (checkpoint -> end, seeking inputs past the restored ``edm.input``) catches them up
without applying an update twice.

Invariants:
- A task's stores are written only after its Kafka transaction committed, so local state is
  never ahead of what the broker holds; a fenced or failed transaction drops the task's buffers.
- A task's producer is started (which finishes or aborts the previous owner's transaction and
  fences it) before the task's committed offsets are read and before its stores are restored:
  so neither can miss a transaction that was still completing.
- Under exactly-once a task's local state counts only if the instance that last held it
  stopped cleanly (``state.clean_mark``): a task dropped here is closed with the mark, as its
  stores hold committed updates only.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Iterable, cast

from edm_runner.brokers.base import Broker, Consumer, OutRecord, Record, TopicPartition
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.kafka_eos import TaskFenced, TransactionalProducer, read_committed, transactional_id
from edm_runner import faults
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.tasks import TaskManager

log = logging.getLogger("edm.runtime")

TaskKey = tuple[int, int]


@dataclass(eq=False)
class _TaskTxn:
    """A task's producer and the input offsets its open transaction will commit."""

    producer: TransactionalProducer
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


class KafkaTransactions:
    """The exactly-once ``runtime.checkpoint.Checkpointer`` on Kafka: the transactions of one
    service instance (see the module docstring).

    Per batch: ``admit`` the fetched records (starts the producers of new tasks), ``processed``
    after each input partition's records went through the topology, ``write`` the batch's
    outputs (each through its task's transaction), and ``commit`` on the commit interval
    (``abort`` on a failed batch).
    """

    def __init__(self, compiled: CompiledService, broker: Broker, tasks: TaskManager | None) -> None:
        self.service = compiled.topology.name
        # Every consumer of the service (group, restores, standbys, global tables) reads committed.
        self.broker = read_committed(cast(KafkaBroker, broker))
        self.tasks = tasks
        self.consumer: Consumer | None = None
        self.sub_of_topic = {t: sub.id for sub in compiled.dag.subtopologies for t in sub.source_topics}
        self.sub_of_changelog = {u.changelog: u.subtopology for u in compiled.catalog.uses.values()
                                 if u.changelog is not None and u.subtopology is not None}
        self.txns: dict[TaskKey, _TaskTxn] = {}
        # (task, input partition, next offset, end of its outputs in the batch), in batch order
        self._marks: list[tuple[TaskKey, TopicPartition, int, int]] = []

    @property
    def dirty(self) -> bool:
        """True while a transaction holds records or offsets not committed yet."""
        return any(txn.producer.dirty or txn.offsets for txn in self.txns.values())

    def key(self, tp: TopicPartition) -> TaskKey:
        return self.sub_of_topic[tp.topic], tp.partition

    async def open(self, consumer: Consumer) -> None:
        """Starts the producers of the tasks assigned at the group's first join."""
        self.consumer = consumer
        await self._start(consumer.assignment())

    async def _start(self, tps: Iterable[TopicPartition]) -> None:
        """Starts the producers of the tasks of ``tps`` that have none, then seeks those
        tasks' partitions among ``tps`` to their committed offsets (read only now that no
        previous owner's transaction can still complete)."""
        consumer = self.consumer
        tps = set(tps)
        new = sorted({self.key(tp) for tp in tps} - set(self.txns))
        if not new:
            return
        producers = [TransactionalProducer(self.broker, transactional_id(self.service, *key)) for key in new]
        results = await asyncio.gather(*(p.start() for p in producers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(p.close() for p in producers), return_exceptions=True)
            raise failed[0]
        self.txns.update((key, _TaskTxn(p)) for key, p in zip(new, producers))
        fresh = set(new)
        for tp in sorted(tps):
            if self.key(tp) in fresh:
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)

    async def admit(self, fetched: dict[TopicPartition, list[Record]]
                    ) -> tuple[dict[TopicPartition, list[Record]], set[TopicPartition]]:
        """Splits ``fetched`` into the records of tasks with a producer and the partitions of
        tasks without one; starts those (they are seeked back, so their records are fetched
        again; their restore comes after their producer). Returns (records to process, newly
        opened partitions)."""
        new = {tp for tp in fetched if self.key(tp) not in self.txns}
        if not new:
            return fetched, new
        await self._start(new)
        return {tp: r for tp, r in fetched.items() if tp not in new}, new

    def processed(self, tp: TopicPartition, next_offset: int, outputs_end: int) -> None:
        """``tp``'s records up to ``next_offset`` were processed; the batch's outputs up to
        index ``outputs_end`` (exclusive) are theirs or earlier partitions'."""
        self._marks.append((self.key(tp), tp, next_offset, outputs_end))

    async def write(self, batch: list[OutRecord], offsets: dict[TopicPartition, int]) -> bool:
        """Sends each output through the transaction of the task whose input produced it (the
        input offsets come from ``processed``)."""
        start = 0
        for key, tp, next_offset, end in self._marks:
            txn = self.txns[key]
            send = txn.producer.send
            for record in batch[start:end]:
                send(record)
            txn.offsets[tp] = next_offset
            start = end
        self._marks.clear()
        return False

    async def commit(self) -> None:
        """Commits every task's transaction (with its changelog records and input offsets),
        then the stores of the tasks whose transaction committed. A fenced task is dropped
        (it moved to another instance); any other failure is raised after the successful
        tasks' stores are written. A failed store write drops the touched tasks' updates."""
        if self.consumer is None:  # never opened: nothing was processed
            return
        group = self.service
        tasks = self.tasks
        try:
            if tasks is not None and tasks.touched:
                for record in tasks.changelog_records():
                    self.txns[(self.sub_of_changelog[record.topic], record.partition)].producer.send(record)
            due = [(key, txn) for key, txn in self.txns.items() if txn.producer.dirty or txn.offsets]
            results = await asyncio.gather(*(txn.producer.commit(txn.offsets, group) for _, txn in due),
                                           return_exceptions=True)
            errors: list[BaseException] = []
            for (key, txn), result in zip(due, results):
                if result is None:
                    txn.offsets = {}
                    continue
                if not isinstance(result, TaskFenced):
                    errors.append(result)
                else:
                    log.warning("%s task %d_%d moved to another instance (%s)", self.service, *key, result)
                await self._drop(key)
            if tasks is not None and tasks.touched:
                faults.reached("after_produce")
                await tasks.commit(await self.consumer.end_offsets(tasks.touched_changelogs()))
        except BaseException:
            if tasks is not None:
                tasks.abort()
            raise
        if errors:
            raise errors[0]
        await self._release_unassigned()

    async def abort(self) -> None:
        """Aborts every open transaction (a failed batch): its outputs and offsets vanish and
        the touched tasks' buffered updates are dropped."""
        self._marks.clear()
        if self.tasks is not None:
            self.tasks.abort()
        due = [(key, txn) for key, txn in self.txns.items() if txn.producer.dirty or txn.offsets]
        results = await asyncio.gather(*(txn.producer.abort() for _, txn in due), return_exceptions=True)
        for (key, txn), result in zip(due, results):
            txn.offsets = {}
            if result is not None:
                await self._drop(key)
        await self._release_unassigned()

    async def close(self) -> None:
        """Closes every producer (an open transaction is aborted by the broker)."""
        txns, self.txns = self.txns, {}
        await asyncio.gather(*(txn.producer.close() for txn in txns.values()), return_exceptions=True)

    async def _drop(self, key: TaskKey) -> None:
        """Forgets a task whose transaction is lost: its producer, and its open state (closed
        with its buffers dropped, so it is restored if it comes back)."""
        txn = self.txns.pop(key, None)
        if txn is not None:
            await txn.producer.close()
        if self.tasks is not None:
            await self.tasks.drop(key)

    async def _release_unassigned(self) -> None:
        """Closes the producers of tasks no longer assigned here (nothing of them is open)."""
        assigned = {self.key(tp) for tp in self.consumer.assignment() if tp.topic in self.sub_of_topic}
        gone = [key for key in self.txns if key not in assigned]
        for key in gone:
            await self.txns.pop(key).producer.close()
