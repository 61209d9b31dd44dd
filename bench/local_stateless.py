"""Benchmark: a stateless pipeline (filter + map_values + to) over 1,000,000 JSON events on the
embedded broker, against a hand-written loop doing the same work on the same LMDB log in the
same run (read the records, JSON-decode, test, build a dict, JSON-encode, append + commit).

Each side runs in its own subprocess over the same input topic (different consumer groups and
output topics), so peak RSS (ru_maxrss of the child) is measured for the edm run alone.
``run()`` returns the figures; ``ratio`` = edm throughput / hand-written throughput.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import compare, run_child
from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.local import LocalBroker

EVENTS = 1_000_000
BATCH = 1000
TARGET_RATIO = 0.5
RSS_LIMIT_MB = 200
INPUT = "events"
FILTER = "value.amount >= 500"
MAP_VALUES = "{'id': value.id, 'user': value.user, 'total': value.amount * 2}"


def _value(i: int) -> dict:
    return {"id": i, "user": f"u{i % 1000}", "type": "click" if i % 3 else "view", "amount": i % 1000}


async def _produce(path: Path, events: int) -> None:
    broker = LocalBroker(path)
    await broker.start()
    await broker.ensure_topics([TopicSpec(INPUT, 1)])
    producer = broker.producer()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    for i in range(events):
        producer.send(OutRecord(INPUT, 0, f"u{i % 1000}".encode(), encode(_value(i)).encode(), i))
        if i % 50_000 == 49_999:
            await producer.flush()
    await producer.flush()
    await broker.close()


async def _edm(path: Path) -> tuple[int, float]:
    from edm_runner.runtime import run_services
    from edm_runner.language.model import PipelineSpec, ProcessingSpec, StepSpec, StreamSpec, Topology, ToSpec

    topology = Topology(
        "bench-stateless", path / "bench.yaml", processing=ProcessingSpec(max_batch=BATCH),
        streams={INPUT: StreamSpec(INPUT, INPUT, 1), "out": StreamSpec("out", "out-edm", 1)},
        pipelines={"p": PipelineSpec("p", [INPUT], steps=[StepSpec("filter", FILTER),
                                                          StepSpec("map_values", MAP_VALUES)],
                                     to=ToSpec("out"))})
    broker = LocalBroker(path)
    await broker.start()
    start = time.perf_counter()
    stats = await run_services([topology], broker, until_idle=True)
    elapsed = time.perf_counter() - start
    await broker.close()
    return stats.events_out, elapsed


async def _baseline(path: Path) -> tuple[int, float]:
    broker = LocalBroker(path)
    await broker.start()
    await broker.ensure_topics([TopicSpec("out-baseline", 1)])
    start = time.perf_counter()
    consumer = broker.consumer("bench-baseline", [INPUT])
    await consumer.start()
    loads = json.loads
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    written = 0
    while True:
        fetched = await consumer.getmany(timeout_ms=0, max_records=BATCH)
        if not fetched:
            break
        out: list[OutRecord] = []
        offsets = {}
        for tp, records in fetched.items():
            for r in records:
                v = loads(r.value)
                if v["amount"] >= 500:
                    new = {"id": v["id"], "user": v["user"], "total": v["amount"] * 2}
                    out.append(OutRecord("out-baseline", 0, r.key, dumps(new).encode(), r.timestamp_ms,
                                         r.headers))
            offsets[tp] = records[-1].offset + 1
        await broker.append_and_commit(out, "bench-baseline", offsets)
        written += len(out)
    elapsed = time.perf_counter() - start
    await consumer.close()
    await broker.close()
    return written, elapsed


def _child(mode: str, path: Path) -> dict:
    """Runs in a subprocess; prints its figures as JSON on stdout."""
    written, elapsed = asyncio.run(_edm(path) if mode == "edm" else _baseline(path))
    return {"written": written, "seconds": elapsed}


def run(events: int = EVENTS) -> dict:
    with tempfile.TemporaryDirectory(prefix="edm-bench-") as tmp:
        path = Path(tmp) / "broker"
        asyncio.run(_produce(path, events))
        edm, edm_rss = run_child("bench.local_stateless", "edm", str(path))
        base, base_rss = run_child("bench.local_stateless", "baseline", str(path))
    if edm["written"] != base["written"]:
        raise RuntimeError(f"edm wrote {edm['written']} events, the hand-written loop {base['written']}")
    return {**compare(events, "events", edm, base, edm_rss, base_rss, target_ratio=TARGET_RATIO,
                      rss_limit_mb=RSS_LIMIT_MB), "written": edm["written"]}


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(_child(sys.argv[1], Path(sys.argv[2]))))
    else:
        print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
