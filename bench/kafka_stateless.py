"""Benchmark: a stateless pipeline (filter + map_values + to) over 200,000 JSON events on a real
Apache Kafka broker, against a hand-written aiokafka loop doing the same work on the same broker
in the same run (consume, JSON-decode, test, build a dict, JSON-encode, produce with acks=all and
idempotence, flush and commit every 100 ms).

The broker is EDM_KAFKA_BOOTSTRAP when set, else a dev broker (``edm_runner.devkafka``) started
in a temporary directory for the run. Both sides read the same input topic (4 partitions) with
their own consumer group and write their own output topic; each side's time runs from its
consumer's start (group join included) to its last commit.
``run()`` returns the figures; ``ratio`` = edm throughput / hand-written throughput.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from bench import kafka_bootstrap
from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.records.partitioner import default_partition

EVENTS = 200_000
PARTITIONS = 4
BATCH = 1000
COMMIT_INTERVAL_MS = 100
TARGET_RATIO = 0.8
FILTER = "value.amount >= 500"
MAP_VALUES = "{'id': value.id, 'user': value.user, 'total': value.amount * 2}"


def _value(i: int) -> dict:
    return {"id": i, "user": f"u{i % 1000}", "type": "click" if i % 3 else "view", "amount": i % 1000}


async def _produce(broker: KafkaBroker, topic: str, events: int) -> None:
    await broker.ensure_topics([TopicSpec(topic, PARTITIONS)])
    producer = broker.producer()
    await producer.start()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    now = int(time.time() * 1000)
    for i in range(events):
        key = f"u{i % 1000}".encode()
        producer.send(OutRecord(topic, default_partition(key, PARTITIONS), key,
                                encode(_value(i)).encode(), now))
        if i % 20_000 == 19_999:
            await producer.flush()
    await producer.flush()
    await producer.close()


async def _edm(broker: KafkaBroker, source: str, target: str, tag: str) -> tuple[int, float]:
    from edm_runner.runtime import run_services
    from edm_runner.language.model import (PipelineSpec, ProcessingSpec, StepSpec, StreamSpec, ToSpec,
                                       Topology)

    topology = Topology(
        f"bench-kafka-edm-{tag}", Path("bench.yaml"),
        processing=ProcessingSpec(commit_interval_ms=COMMIT_INTERVAL_MS, max_batch=BATCH),
        streams={"in": StreamSpec("in", source, PARTITIONS),
                 "out": StreamSpec("out", target, PARTITIONS)},
        pipelines={"p": PipelineSpec("p", ["in"], steps=[StepSpec("filter", FILTER),
                                                         StepSpec("map_values", MAP_VALUES)],
                                     to=ToSpec("out"))})
    start = time.perf_counter()
    stats = await run_services([topology], broker, until_idle=True)
    return stats.events_out, time.perf_counter() - start


async def _baseline(bootstrap: str, source: str, target: str, tag: str, events: int) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    admin = KafkaBroker({"bootstrap_servers": bootstrap})
    await admin.start()
    await admin.ensure_topics([TopicSpec(target, PARTITIONS)])
    await admin.close()
    start = time.perf_counter()
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"bench-kafka-base-{tag}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    loads = json.loads
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    send = producer.send
    written = consumed = 0
    pending: list[asyncio.Future] = []
    offsets = {}
    last_commit = time.monotonic()
    while consumed < events:
        fetched = await consumer.getmany(timeout_ms=100, max_records=BATCH)
        for tp, records in fetched.items():
            for r in records:
                v = loads(r.value)
                if v["amount"] >= 500:
                    new = {"id": v["id"], "user": v["user"], "total": v["amount"] * 2}
                    pending.append(await send(target, dumps(new).encode(), r.key, r.partition,
                                              r.timestamp))
            consumed += len(records)
            offsets[tp] = records[-1].offset + 1
        if (time.monotonic() - last_commit) * 1000 >= COMMIT_INTERVAL_MS or consumed >= events:
            await asyncio.gather(*pending)
            written += len(pending)
            pending = []
            if offsets:
                await consumer.commit(offsets)
            offsets = {}
            last_commit = time.monotonic()
    elapsed = time.perf_counter() - start
    await producer.stop()
    await consumer.stop()
    return written, elapsed


async def _scenario(bootstrap: str, events: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    source = f"bench-kafka-in-{tag}"
    broker = KafkaBroker({"bootstrap_servers": bootstrap})
    await broker.start()
    try:
        await _produce(broker, source, events)
        edm_written, edm_seconds = await _edm(broker, source, f"bench-kafka-edm-out-{tag}", tag)
    finally:
        await broker.close()
    base_written, base_seconds = await _baseline(bootstrap, source, f"bench-kafka-base-out-{tag}",
                                                 tag, events)
    if edm_written != base_written:
        raise RuntimeError(f"edm wrote {edm_written} events, the hand-written loop {base_written}")
    edm_tput = events / edm_seconds
    base_tput = events / base_seconds
    ratio = edm_tput / base_tput
    return {
        "events": events,
        "partitions": PARTITIONS,
        "written": edm_written,
        "edm_seconds": round(edm_seconds, 3),
        "edm_events_per_s": round(edm_tput),
        "baseline_seconds": round(base_seconds, 3),
        "baseline_events_per_s": round(base_tput),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio >= TARGET_RATIO,
    }


def run(events: int = EVENTS) -> dict:
    with kafka_bootstrap() as bootstrap:
        return asyncio.run(_scenario(bootstrap, events))


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
