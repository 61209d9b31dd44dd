"""A service's group consumer, with an ``EdmAssignor`` where the broker shares groups out."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Mapping, Sequence

from edm_runner.brokers.base import Broker, Consumer, RebalanceListener, Record, TopicPartition
from edm_runner.graph.dag import Dag
from edm_runner.invocation import Invocation
from edm_runner.language.model import Topology
from edm_runner.runtime.assignment.assignor import EdmAssignor

if TYPE_CHECKING:
    from edm_runner.runtime.tasks import StandbyTasks, TaskManager


def group_consumer(broker: Broker, topology: Topology, dag: Dag, topics: list[str],
                   listener: RebalanceListener | None = None, tasks: TaskManager | None = None,
                   standbys: StandbyTasks | None = None,
                   invocation: Invocation | None = None) -> tuple[Consumer, EdmAssignor | None]:
    """The consumer of ``topology``'s group over ``topics``, telling ``listener`` of its
    rebalances. Where the broker ``supports_assignor`` (several members per group), with an
    ``EdmAssignor`` (its hints repeating ``invocation``) and static membership when the topology
    has an instance id; elsewhere the assignor is None (one member holds every partition, so
    ``static`` pins and ``custom`` classes do not apply).

    The assignor's ``local_offsets`` reports the checkpoints of ``tasks`` (None when
    stateless) and ``standbys``. It runs at every join, on the event loop, so it reads no disk:
    tasks open in this process report from memory (LMDB must not open an environment twice in
    a process either), the others from ``tasks.on_disk`` (scanned in a thread before the group
    is joined, updated as tasks close).

    A service with no source topic (it only ingests over HTTP) joins no group, on any broker:
    there is nothing to share out (and Kafka refuses a member that subscribes to nothing). Its
    consumer is a ``NoInput``; with no assignor, each instance routes to itself alone."""
    if not topics:
        return NoInput(), None
    if not broker.supports_assignor:
        return broker.consumer(topology.name, topics, listener=listener), None
    instance_id = topology.processing.instance_id
    assignor = EdmAssignor(topology, dag, instance_id, invocation=invocation)
    if tasks is not None:
        opened = [tasks] if standbys is None else [tasks, standbys]
        assignor.local_offsets = lambda: {
            **tasks.on_disk, **{key: sum(task.state.checkpoint().changelogs.values())
                                for group in opened for key, task in group.tasks.items()}}
    consumer = broker.consumer(topology.name, topics, listener=listener, assignor=assignor,
                               group_instance_id=instance_id)
    return consumer, assignor


class NoInput:
    """The ``Consumer`` of a service that reads no topic: never assigned anything; ``getmany``
    waits ``timeout_ms`` (so the run loop polls at its pace, never spins) and returns nothing."""

    async def start(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        return None

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    async def position(self, tp: TopicPartition) -> int:
        raise ValueError(f"{tp} is not assigned: this service reads no topic")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise ValueError(f"{tp} is not assigned: this service reads no topic")

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        return None

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        return None

    async def close(self) -> None:
        return None
