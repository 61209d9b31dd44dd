"""Exactly-once on Kafka: transactional producers and read-committed consumers.

aiokafka's ``send_offsets_to_transaction`` has no KIP-447 fencing (the group generation is not
checked), so a zombie that lost a partition could still commit offsets for it. The classic
remedy is used instead: one transactional producer per task (input partition of a
sub-topology), its ``transactional.id`` derived from the service, the sub-topology and the
partition (``transactional_id``). When a new owner starts that producer, Kafka aborts the
previous owner's open transaction, waits for one being committed, and fences the old epoch:
from then on every send or commit of the zombie fails with ``TaskFenced``.

Invariants:
- ``TransactionalProducer.start`` returns only after the transactional id is registered (the
  previous owner's transaction is finished and its epoch fenced) and a transaction is open.
- ``commit`` makes the records sent since the last commit and the given group offsets visible
  atomically (to ``read_committed`` readers), then opens the next transaction; ``abort`` drops
  them. After a failed commit or abort the producer is unusable: the caller closes it.
- Records always go to the partition given in the ``OutRecord`` (as ``KafkaProducer``).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from edm_runner.brokers.base import TopicPartition
from edm_runner.brokers.kafka import KafkaBroker, KafkaProducer, _describe_error
from edm_runner.errors import BrokerError

# Kafka's default: a transaction left open by a dead owner blocks read_committed readers of
# its partitions until the new owner starts its producer, or at most this long.
TRANSACTION_TIMEOUT_MS = 60_000


class TaskFenced(BrokerError):
    """Another instance started this task's transactional producer: the task moved away.
    The transaction in progress is lost (it is aborted by the broker)."""


def transactional_id(service: str, subtopology: int, partition: int) -> str:
    """The task's transactional id: stable across restarts, unique per task of the service."""
    return f"edm-{service}-{subtopology}_{partition}"


def read_committed(broker: KafkaBroker) -> KafkaBroker:
    """A view of ``broker`` whose consumers read committed records only (isolation_level
    read_committed: no record of an open or aborted transaction; end offsets are the last
    stable offsets). It shares ``broker``'s connection: close only the original."""
    view = copy.copy(broker)
    view._consumer_options = {**broker._consumer_options, "isolation_level": "read_committed"}
    return view


class TransactionalProducer(KafkaProducer):
    """A ``KafkaProducer`` whose records belong to a transaction (see the module docstring)."""

    def __init__(self, broker: KafkaBroker, transactional_id: str) -> None:
        # The same settings as KafkaBroker.producer, plus the transactional id (which implies
        # idempotence and acks=all); user producer options still win, as there.
        kwargs: dict[str, Any] = {
            **broker._common,
            "client_id": f"{broker.client_id}-{transactional_id}",
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_batch_size": 256 * 1024,
            "request_timeout_ms": 60_000,
            "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
            **broker._producer_options,
            "transactional_id": transactional_id,
        }
        super().__init__(broker, kwargs)
        self.transactional_id = transactional_id
        self.dirty = False  # records or offsets added since the transaction began

    async def start(self) -> None:
        await super().start()
        try:
            await self._txn("registering the transactional id", self._producer.begin_transaction())
        except BaseException:
            await self.close()
            raise

    def send(self, record: Any) -> None:
        self.dirty = True
        super().send(record)

    async def commit(self, offsets: Mapping[TopicPartition, int], group: str) -> None:
        """Commit the records sent so far and ``offsets`` (next offsets to read of ``group``)
        in one transaction, then begin the next one."""
        try:
            await self.flush()
        except BrokerError as exc:
            raise self._fenced_or(exc) from exc
        if offsets:
            await self._txn(f"adding the offsets of group '{group}' to the transaction",
                            self._producer.send_offsets_to_transaction(
                                {KafkaTP(*tp): o for tp, o in offsets.items()}, group))
        await self._txn("committing the transaction", self._producer.commit_transaction())
        self.dirty = False
        await self._txn("beginning a transaction", self._producer.begin_transaction())

    async def abort(self) -> None:
        """Drop what was sent since the last commit, then begin the next transaction."""
        await self._txn("aborting the transaction", self._producer.abort_transaction())
        self.dirty = False
        await self._txn("beginning a transaction", self._producer.begin_transaction())

    async def _txn(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise self._fenced() from exc
        except KafkaError as exc:
            raise BrokerError(f"{what} ({self.transactional_id}) on {self._broker.describe()} failed: "
                              f"{_describe_error(exc)}; the transaction is not committed") from exc

    def _fenced(self) -> TaskFenced:
        return TaskFenced(f"{self.transactional_id} was fenced: another instance took over its "
                          "task; the work of the open transaction is dropped")

    def _fenced_or(self, exc: BrokerError) -> BrokerError:
        """A failed flush is a fencing when aiokafka's cause says so."""
        if isinstance(exc.__cause__, (ProducerFenced, InvalidProducerEpoch)):
            return self._fenced()
        return exc
