"""A separate OS process using a local broker directory, for the multi-process and crash tests.

    produce PATH TOPIC PARTITIONS WRITER COUNT BATCH
        appends COUNT records (forever if COUNT is 0) with key WRITER and value "WRITER:i",
        record i to partition i % PARTITIONS, flushing every BATCH; prints "flushed N" after
        each flush (N records durable so far).
    consume PATH TOPIC GROUP
        consumes TOPIC as GROUP forever, committing after every batch; prints "ready" once
        the group is held, then "committed N" (total committed offset) after each commit.
"""
from __future__ import annotations

import asyncio
import sys
from itertools import count
from pathlib import Path

from edm_runner.brokers.base import OutRecord
from edm_runner.brokers.local import LocalBroker


async def produce(path: str, topic: str, partitions: int, writer: str, total: int,
                  batch: int) -> None:
    broker = LocalBroker(Path(path))
    producer = broker.producer()
    await producer.start()
    key = writer.encode()
    padding = b"x" * 200
    for i in count() if total == 0 else range(total):
        producer.send(OutRecord(topic, i % partitions, key, f"{writer}:{i}".encode() + b"|" + padding,
                                i))
        if (i + 1) % batch == 0 or i + 1 == total:
            await producer.flush()
            print(f"flushed {i + 1}", flush=True)
    await broker.close()


async def consume(path: str, topic: str, group: str) -> None:
    broker = LocalBroker(Path(path))
    consumer = broker.consumer(group, [topic])
    await consumer.start()
    print("ready", flush=True)
    positions: dict = {}
    while True:
        batch = await consumer.getmany(timeout_ms=100, max_records=50)
        if not batch:
            continue
        for tp, records in batch.items():
            positions[tp] = records[-1].offset + 1
        await consumer.commit(positions)
        print(f"committed {sum(positions.values())}", flush=True)


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "produce":
        path, topic, partitions, writer, total, batch = args
        asyncio.run(produce(path, topic, int(partitions), writer, int(total), int(batch)))
    elif command == "consume":
        asyncio.run(consume(*args))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
