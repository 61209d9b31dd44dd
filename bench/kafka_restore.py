"""Benchmark: restore a 1,000,000-key store from its changelog on a real Apache Kafka broker,
against a hand-written restore in the same run: an aiokafka consumer reading every changelog
partition from the beginning to its end offset and writing each fetched batch into LMDB with one
``putmulti`` per write transaction (sync on, as edm's task environments).

The changelog ``<service>-counts-changelog`` (4 partitions, compacted) is filled directly with
1,000,000 distinct keys, as a count-per-user service would have left it. The edm side is that
service started on an empty state directory and an empty input topic with ``until_idle``; its
figure is the runtime's restore wall time (``restore_seconds``: opening the task states, reading
the changelogs, writing LMDB), and ``edm_end_to_end_seconds`` adds the group join and start-up. Each
side runs in its own subprocess, so peak RSS (ru_maxrss of the child) is the restore's alone.
Each side runs twice, first and then second (the first read of the log warms the broker); the
best run of each side is compared.

The broker is EDM_KAFKA_BOOTSTRAP when set, else a dev broker (``edm_runner.devkafka``) started
in a temporary directory for the run. ``ratio`` = edm restore throughput / hand-written throughput.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import compare, kafka_bootstrap, run_child
from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.state.restore import store_headers
from edm_runner.state.task import fingerprint

KEYS = 1_000_000
PARTITIONS = 4
FETCH = 50_000
TARGET_RATIO = 0.7
RSS_LIMIT_MB = 300


def _topology(name: str, bootstrap: str, directory: Path):
    from edm_runner.language.model import (BrokerSpec, PipelineSpec, StepSpec, StoreSpec, StreamSpec,
                                       Topology, ToSpec)
    return Topology(
        name, directory / "bench.yaml",
        broker=BrokerSpec("kafka", options={"bootstrap_servers": bootstrap}),
        streams={"in": StreamSpec("in", f"{name}-events", PARTITIONS),
                 "out": StreamSpec("out", f"{name}-counts", PARTITIONS, type="entity")},
        stores={"counts": StoreSpec("counts")},
        pipelines={"p": PipelineSpec("p", ["in"], steps=[StepSpec("group_by_key", {}),
                                                         StepSpec("count", {"store": "counts"})],
                                     to=ToSpec("out"))})


async def fill_changelog(broker: KafkaBroker, name: str, keys: int) -> str:
    """Creates the count service ``name``'s topics and writes ``keys`` records to its
    changelog, as the service would have left them (each naming the store's definition, which
    the restore checks); returns the changelog topic."""
    changelog = f"{name}-counts-changelog"
    await broker.ensure_topics([TopicSpec(f"{name}-events", PARTITIONS),
                                TopicSpec(f"{name}-counts", PARTITIONS, compacted=True),
                                TopicSpec(changelog, PARTITIONS, compacted=True)])
    producer = broker.producer()
    await producer.start()
    params = {"aggregation": "count"}
    headers, _ = store_headers({"type": "key_value", "params": params,
                                "fingerprint": fingerprint("key_value", params)})
    for i in range(keys):
        user = f"user-{i}"
        producer.send(OutRecord(changelog, default_partition(user.encode(), PARTITIONS),
                                b'"%s"' % user.encode(), b"%d" % (i % 1000 + 1), 0, headers))
        if i % 50_000 == 49_999:
            await producer.flush()
    await producer.flush()
    await producer.close()
    return changelog


async def _fill(bootstrap: str, name: str, keys: int) -> None:
    broker = KafkaBroker({"bootstrap_servers": bootstrap})
    await broker.start()
    try:
        await fill_changelog(broker, name, keys)
    finally:
        await broker.close()


async def _edm(name: str, bootstrap: str, directory: Path) -> tuple[int, float]:
    from edm_runner.runtime import run_services
    broker = KafkaBroker({"bootstrap_servers": bootstrap})
    await broker.start()
    try:
        start = time.perf_counter()
        stats = await run_services([_topology(name, bootstrap, directory)], broker, until_idle=True,
                                   state_dir=directory)
        service = stats.services[name]
        return service.restored, service.restore_seconds, time.perf_counter() - start
    finally:
        await broker.close()


async def _baseline(name: str, bootstrap: str, directory: Path) -> tuple[int, float, float]:
    import lmdb
    from aiokafka import AIOKafkaConsumer, TopicPartition

    changelog = f"{name}-counts-changelog"
    start = time.perf_counter()
    env = lmdb.open(str(directory / "baseline"), map_size=16 << 30, max_dbs=2, sync=True,
                    metasync=True, readahead=False)
    db = env.open_db(b"counts")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    tps = [TopicPartition(changelog, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    restored = 0
    try:
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            fetched = await consumer.getmany(timeout_ms=500, max_records=FETCH)
            for records in fetched.values():
                with env.begin(write=True, db=db) as txn:
                    txn.cursor().putmulti([(r.key, r.value) for r in records])
                restored += len(records)
    finally:
        await consumer.stop()
        env.close()
    elapsed = time.perf_counter() - start
    return restored, elapsed, elapsed


def _child(mode: str, name: str, bootstrap: str, directory: Path) -> dict:
    """Runs in a subprocess; prints its figures as JSON on stdout."""
    side = _edm if mode == "edm" else _baseline
    restored, restoring, elapsed = asyncio.run(side(name, bootstrap, directory))
    return {"restored": restored, "seconds": restoring, "end_to_end_seconds": elapsed}


def _scenario(bootstrap: str, keys: int) -> dict:
    name = f"bench-restore-{uuid.uuid4().hex[:8]}"
    asyncio.run(_fill(bootstrap, name, keys))
    runs: dict[str, list[tuple[dict, float]]] = {"edm": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="edm-bench-restore-") as tmp:
        # Alternate which side reads first (the first read of the log warms the broker), and
        # keep each side's best run.
        for index, order in enumerate((("edm", "baseline"), ("baseline", "edm"))):
            for side in order:
                directory = Path(tmp) / f"{side}-{index}"
                directory.mkdir()
                runs[side].append(run_child("bench.kafka_restore", side, name, bootstrap, str(directory)))
    edm, _ = min(runs["edm"], key=lambda run: run[0]["seconds"])
    base, _ = min(runs["baseline"], key=lambda run: run[0]["seconds"])
    edm_rss = max(rss for _, rss in runs["edm"])
    base_rss = max(rss for _, rss in runs["baseline"])
    if edm["restored"] != keys or base["restored"] != keys:
        raise RuntimeError(f"expected {keys} records restored; edm restored {edm['restored']}, "
                           f"the hand-written loop {base['restored']}")
    return {**compare(keys, "records", edm, base, edm_rss, base_rss, target_ratio=TARGET_RATIO,
                      rss_limit_mb=RSS_LIMIT_MB), "partitions": PARTITIONS,
            "edm_end_to_end_seconds": round(edm["end_to_end_seconds"], 3)}


def run(keys: int = KEYS) -> dict:
    with kafka_bootstrap() as bootstrap:
        return _scenario(bootstrap, keys)


if __name__ == "__main__":
    if len(sys.argv) == 5:
        print(json.dumps(_child(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
    else:
        print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else KEYS), indent=2))
