"""Benchmark: a count per key (group_by_key + count into a changelogged key-value store) over
1,000,000 JSON events on the embedded broker, against a hand-written loop doing the same work on
the same LMDB log in the same run: read a batch, LMDB get + put of each key's count (one write
transaction per batch, JSON bytes as edm stores them), one output record per event and one
changelog record per key changed in the batch, appended with the input offsets in one broker
transaction.

Each side runs in its own subprocess over the same input topic (different consumer groups, output
topics and state), so peak RSS (ru_maxrss of the child) is measured for the edm run alone.
``run()`` returns the figures; ``ratio`` = edm throughput / hand-written throughput.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import lmdb

from bench import compare, produce_keyed_events, run_child
from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.local import LocalBroker

EVENTS = 1_000_000
KEYS = 10_000
BATCH = 1000
TARGET_RATIO = 0.5
INPUT = "events"


async def _edm(path: Path) -> tuple[dict, float]:
    from edm_runner.runtime import run_services
    from edm_runner.language.model import (PipelineSpec, ProcessingSpec, StepSpec, StoreSpec, StreamSpec,
                                       Topology, ToSpec)

    topology = Topology(
        "bench-count", path / "bench.yaml", processing=ProcessingSpec(max_batch=BATCH),
        streams={INPUT: StreamSpec(INPUT, INPUT, 1), "out": StreamSpec("out", "counts-edm", 1)},
        stores={"counts": StoreSpec("counts")},
        pipelines={"p": PipelineSpec("p", [INPUT], steps=[StepSpec("group_by_key", {}),
                                                          StepSpec("count", {"store": "counts"})],
                                     to=ToSpec("out"))})
    broker = LocalBroker(path / "broker")
    await broker.start()
    start = time.perf_counter()
    stats = await run_services([topology], broker, until_idle=True, state_dir=path)
    elapsed = time.perf_counter() - start
    await broker.close()
    return {"written": stats.events_out}, elapsed


async def _baseline(path: Path) -> tuple[dict, float]:
    broker = LocalBroker(path / "broker")
    await broker.start()
    changelog = "bench-baseline-counts-changelog"
    await broker.ensure_topics([TopicSpec("counts-baseline", 1), TopicSpec(changelog, 1, compacted=True)])
    env = lmdb.open(str(path / "baseline-state"), map_size=4 << 30, max_dbs=2)
    db = env.open_db(b"counts")
    start = time.perf_counter()
    consumer = broker.consumer("bench-baseline", [INPUT])
    await consumer.start()
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    loads = json.loads
    written = 0
    while True:
        fetched = await consumer.getmany(timeout_ms=0, max_records=BATCH)
        if not fetched:
            break
        out: list[OutRecord] = []
        offsets = {}
        dirty: dict[bytes, bytes] = {}
        with env.begin(write=True, db=db) as txn:
            for tp, records in fetched.items():
                for r in records:
                    k = dumps(r.key.decode()).encode()
                    old = dirty.get(k) or txn.get(k)
                    value = dumps((loads(old) if old is not None else 0) + 1).encode()
                    dirty[k] = value
                    out.append(OutRecord("counts-baseline", 0, r.key, value, r.timestamp_ms))
                offsets[tp] = records[-1].offset + 1
            out += [OutRecord(changelog, 0, k, v, 0) for k, v in dirty.items()]
            await broker.append_and_commit(out, "bench-baseline", offsets)
            txn.cursor().putmulti(list(dirty.items()))
        written += len(out) - len(dirty)
    elapsed = time.perf_counter() - start
    await consumer.close()
    await broker.close()
    env.close()
    return {"written": written}, elapsed


def _child(mode: str, path: Path) -> dict:
    """Runs in a subprocess; prints its figures as JSON on stdout."""
    figures, elapsed = asyncio.run(_edm(path) if mode == "edm" else _baseline(path))
    return {**figures, "seconds": elapsed}


def run(events: int = EVENTS) -> dict:
    with tempfile.TemporaryDirectory(prefix="edm-bench-count-") as tmp:
        path = Path(tmp)
        asyncio.run(produce_keyed_events(path / "broker", INPUT, events, KEYS, 1))
        edm, edm_rss = run_child("bench.local_count", "edm", str(path))
        base, base_rss = run_child("bench.local_count", "baseline", str(path))
    if edm["written"] != events or base["written"] != events:
        raise RuntimeError(f"expected {events} counts written; edm wrote {edm['written']}, "
                           f"the hand-written loop {base['written']}")
    return {**compare(events, "events", edm, base, edm_rss, base_rss, target_ratio=TARGET_RATIO), "keys": KEYS}


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(_child(sys.argv[1], Path(sys.argv[2]))))
    else:
        print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
