"""Benchmark: the stateful count (group_by_key + count into a changelogged key-value store) on a
real Apache Kafka broker under exactly-once against the same service under at-least-once, in
the same run.

200,000 JSON events over 10,000 keys on 4 partitions are written once; each run is a fresh
service (its own consumer group, output topic, changelog and state directory) reading them
with ``until_idle``; its time runs from the start (group join included) until it is idle, i.e.
every input processed, every transaction (or flush and offset commit) done. The two guarantees
alternate, ``ROUNDS`` runs each, and each keeps its best time (the least disturbed by other load).

The broker is EDM_KAFKA_BOOTSTRAP when set, else a dev broker (``edm_runner.devkafka``) started
in a temporary directory for the run. ``ratio`` = exactly-once throughput / at-least-once
throughput.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import kafka_bootstrap
from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.records.partitioner import default_partition

EVENTS = 200_000
KEYS = 10_000
PARTITIONS = 4
BATCH = 1000
COMMIT_INTERVAL_MS = 100
ROUNDS = 2
TARGET_RATIO = 0.6


async def _produce(broker: KafkaBroker, topic: str, events: int) -> None:
    await broker.ensure_topics([TopicSpec(topic, PARTITIONS)])
    producer = broker.producer()
    await producer.start()
    now = int(time.time() * 1000)
    for i in range(events):
        key = f"u{i % KEYS}".encode()
        producer.send(OutRecord(topic, default_partition(key, PARTITIONS), key,
                                b'{"n":%d}' % i, now))
        if i % 20_000 == 19_999:
            await producer.flush()
    await producer.flush()
    await producer.close()


async def _count(broker: KafkaBroker, source: str, guarantee: str, state_dir: Path) -> tuple[int, float]:
    from edm_runner.runtime import run_services
    from edm_runner.language.model import (PipelineSpec, ProcessingSpec, StepSpec, StoreSpec, StreamSpec,
                                       ToSpec, Topology)

    name = f"bench-eos-{guarantee[:3]}-{uuid.uuid4().hex[:8]}"
    topology = Topology(
        name, state_dir / "bench.yaml",
        processing=ProcessingSpec(guarantee=guarantee, commit_interval_ms=COMMIT_INTERVAL_MS,  # type: ignore[arg-type]
                                  max_batch=BATCH),
        streams={"in": StreamSpec("in", source, PARTITIONS),
                 "out": StreamSpec("out", f"{name}-counts", PARTITIONS, type="entity")},
        stores={"counts": StoreSpec("counts")},
        pipelines={"p": PipelineSpec("p", ["in"], steps=[StepSpec("group_by_key", {}),
                                                         StepSpec("count", {"store": "counts"})],
                                     to=ToSpec("out"))})
    start = time.perf_counter()
    stats = await run_services([topology], broker, until_idle=True, state_dir=state_dir)
    return stats.services[name].events_out, time.perf_counter() - start


async def _scenario(bootstrap: str, events: int, workdir: Path) -> dict:
    source = f"bench-eos-in-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker({"bootstrap_servers": bootstrap})
    await broker.start()
    best = {"at_least_once": float("inf"), "exactly_once": float("inf")}
    try:
        await _produce(broker, source, events)
        for i in range(ROUNDS):
            for guarantee in best:
                written, seconds = await _count(broker, source, guarantee, workdir / f"{guarantee}-{i}")
                if written != events:
                    raise RuntimeError(f"{guarantee}: {written} counts written for {events} events")
                best[guarantee] = min(best[guarantee], seconds)
    finally:
        await broker.close()
    eos_tput = events / best["exactly_once"]
    alos_tput = events / best["at_least_once"]
    ratio = eos_tput / alos_tput
    return {
        "events": events,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "rounds": ROUNDS,
        "eos_seconds": round(best["exactly_once"], 3),
        "eos_events_per_s": round(eos_tput),
        "alos_seconds": round(best["at_least_once"], 3),
        "alos_events_per_s": round(alos_tput),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio >= TARGET_RATIO,
    }


def run(events: int = EVENTS) -> dict:
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="edm-bench-eos-") as tmp:
        return asyncio.run(_scenario(bootstrap, events, Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
