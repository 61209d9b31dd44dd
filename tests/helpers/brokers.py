"""The broker harness of the tests: start a broker, run a coroutine against it, close it (also
when the coroutine fails). ``run_on`` for a test's whole body, ``started`` inside one; the
``run_local`` fixture (conftest.py) is ``run_on`` over the test's own local broker. ``drain``
and ``records`` read back what the embedded broker holds, ``read_to_end`` what any broker holds."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from edm_runner.brokers.base import Record, TopicPartition
from edm_runner.brokers.local import LocalBroker

B = TypeVar("B")  # a broker: LocalBroker, KafkaBroker (start/close)
T = TypeVar("T")

RunLocal = Callable[[Callable[[LocalBroker], Awaitable[Any]]], Any]


@asynccontextmanager
async def started(broker: B) -> AsyncIterator[B]:
    """``broker`` started for the block, closed after it."""
    await broker.start()  # type: ignore[attr-defined]
    try:
        yield broker
    finally:
        await broker.close()  # type: ignore[attr-defined]


def run_on(broker: B, body: Callable[[B], Awaitable[T]]) -> T:
    """``body(broker)`` in a fresh event loop, with ``broker`` started for it and closed after."""
    async def main() -> T:
        async with started(broker):
            return await body(broker)
    return asyncio.run(main())


async def drain(broker: LocalBroker, topics: list[str]) -> dict[TopicPartition, list[Record]]:
    """Every record of ``topics`` on the embedded broker, per partition in offset order (a
    group-less reader from the beginning, until a fetch that does not wait returns nothing)."""
    out: dict[TopicPartition, list[Record]] = {}
    async with started(broker.consumer(None, topics)) as consumer:
        while batch := await consumer.getmany(timeout_ms=0, max_records=10_000):
            for tp, found in batch.items():
                out.setdefault(tp, []).extend(found)
    return out


async def records(broker: LocalBroker, topic: str) -> list[Record]:
    """Every record of ``topic`` (``drain``), partition by partition."""
    out = await drain(broker, [topic])
    return [r for tp in sorted(out) for r in out[tp]]


async def read_to_end(broker: Any, topic: str) -> list[Record]:
    """Every record of ``topic`` on any broker (embedded or Kafka), partition by partition in
    offset order: a group-less reader from the beginning up to the end offsets at its start
    (on Kafka an empty fetch does not mean the end, so ``drain``'s rule does not hold there)."""
    async with started(broker.consumer(None, [topic])) as consumer:
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        out: dict[TopicPartition, list[Record]] = {tp: [] for tp in tps}
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for tp, found in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
                out[tp].extend(found)
    return [r for tp in tps for r in out[tp]]
