"""``Producer.write``: records written and acknowledged at once, with the offset of each, on
both brokers (what HTTP ingestion answers with). The offsets it returns are where a reader
finds each record; a failed write leaves the producer usable."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.base import Broker, OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.errors import BrokerError
from helpers.brokers import started


async def scenario(broker: Broker) -> None:
    topic = f"write-{uuid.uuid4().hex[:8]}"
    async with started(broker):
        await broker.ensure_topics([TopicSpec(topic, 3)])
        producer = broker.producer()
        await producer.start()
        try:
            first = [OutRecord(topic, i % 3, f"k{i}".encode(), f"v{i}".encode(), 1000 + i) for i in range(10)]
            offsets = await producer.write(first)
            assert offsets == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
            second = [OutRecord(topic, 1, b"k", f"w{i}".encode(), 2000) for i in range(3)]
            assert await producer.write(second) == [3, 4, 5]
            with pytest.raises(BrokerError, match="partition 7"):
                await producer.write([OutRecord(topic, 7, b"k", b"v", 0)])
            assert await producer.write([OutRecord(topic, 2, b"k", b"after", 0)]) == [3]  # still usable
            assert await producer.write([]) == []
            # Concurrent writers (their records may share batches): each gets its own offsets.
            concurrent = [[OutRecord(topic, (w + i) % 3, b"c", f"c{w}-{i}".encode(), 3000) for i in range(5)]
                          for w in range(20)]
            answers = await asyncio.gather(*(producer.write(records) for records in concurrent))
        finally:
            await producer.close()
        async with started(broker.consumer(None, [topic])) as reader:
            found = {}
            while len(found) < 114:
                for records in (await reader.getmany(timeout_ms=1000, max_records=100)).values():
                    for r in records:
                        found[(r.partition, r.offset)] = r.value
        for record, offset in zip(first + second, offsets + [3, 4, 5]):
            assert found[(record.partition, offset)] == record.value
        assert found[(2, 3)] == b"after"
        for records, offsets in zip(concurrent, answers):
            assert [found[(r.partition, o)] for r, o in zip(records, offsets)] == [r.value for r in records]


def test_write_returns_offsets_on_the_embedded_broker(tmp_path: Path) -> None:
    asyncio.run(scenario(LocalBroker(tmp_path / "broker")))


@pytest.mark.kafka
def test_write_returns_offsets_on_kafka(kafka_bootstrap: str) -> None:
    asyncio.run(scenario(KafkaBroker({"bootstrap_servers": kafka_bootstrap})))
