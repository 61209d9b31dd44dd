"""Scenario ``loop-lag``: the event loop's stalls during a commit-heavy stateful run.

A count per key (group_by_key + count into a changelogged key-value store) over 200,000 JSON
events spread over 20,000 keys and 4 partitions on the embedded broker, with a 50 ms commit
interval, runs through ``run_services`` while a monitor coroutine on the same loop sleeps
5 ms again and again and records how late it wakes. Whatever holds the loop (a batch being
processed, an LMDB commit with its fsync, a changelog append) shows as lag.

Baseline, in the same process just before: the same monitor on an idle loop for one second
(the machine's own scheduling noise). There is no ratio: the targets are absolute (issue 9:
p99 below 20 ms, max below 100 ms).
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import produce_keyed_events, run_child
from edm_runner.brokers.local import LocalBroker

EVENTS = 200_000
KEYS = 20_000
PARTITIONS = 4
BATCH = 1000
COMMIT_INTERVAL_MS = 50
TICK = 0.005
IDLE_SECONDS = 1.0
TARGET_P99_MS = 20.0
TARGET_MAX_MS = 100.0
INPUT = "events"


async def _monitor(lags: list[float], stop: asyncio.Event) -> None:
    """Sleeps ``TICK`` until ``stop``; appends how late each wake-up was, in seconds."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - start - TICK)


async def _monitored(work) -> tuple[list[float], object]:
    """Runs the awaitable ``work`` with the monitor beside it; returns the lags and its result."""
    lags: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(_monitor(lags, stop))
    try:
        result = await work
    finally:
        stop.set()
        await monitor
    return lags, result


async def _measure(path: Path) -> dict:
    from edm_runner.runtime import run_services
    from edm_runner.language.model import (PipelineSpec, ProcessingSpec, StepSpec, StoreSpec, StreamSpec,
                                       Topology, ToSpec)

    idle, _ = await _monitored(asyncio.sleep(IDLE_SECONDS))
    topology = Topology(
        "bench-lag", path / "bench.yaml",
        processing=ProcessingSpec(max_batch=BATCH, commit_interval_ms=COMMIT_INTERVAL_MS),
        streams={INPUT: StreamSpec(INPUT, INPUT, PARTITIONS), "out": StreamSpec("out", "counts", PARTITIONS)},
        stores={"counts": StoreSpec("counts")},
        pipelines={"p": PipelineSpec("p", [INPUT], steps=[StepSpec("group_by_key", {}),
                                                          StepSpec("count", {"store": "counts"})],
                                     to=ToSpec("out"))})
    broker = LocalBroker(path / "broker")
    await broker.start()
    start = time.perf_counter()
    lags, stats = await _monitored(run_services([topology], broker, until_idle=True, state_dir=path))
    elapsed = time.perf_counter() - start
    await broker.close()
    return {"written": stats.events_out, "seconds": elapsed, "lags": lags, "idle_lags": idle}


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def run(events: int = EVENTS) -> dict:
    with tempfile.TemporaryDirectory(prefix="edm-bench-lag-") as tmp:
        path = Path(tmp)
        asyncio.run(produce_keyed_events(path / "broker", INPUT, events, KEYS, PARTITIONS))
        figures, rss = run_child("bench.loop_lag", "edm", str(path))
    if figures["written"] != events:
        raise RuntimeError(f"expected {events} counts written; edm wrote {figures['written']}")
    lags, idle = figures["lags"], figures["idle_lags"]
    p99, worst = _percentile(lags, 99), max(lags) * 1000
    return {
        "events": events,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "commit_interval_ms": COMMIT_INTERVAL_MS,
        "edm_seconds": round(figures["seconds"], 3),
        "edm_events_per_s": round(events / figures["seconds"]),
        "samples": len(lags),
        "lag_p50_ms": round(_percentile(lags, 50), 1),
        "lag_p99_ms": round(p99, 1),
        "lag_max_ms": round(worst, 1),
        "idle_lag_p99_ms": round(_percentile(idle, 99), 1),
        "idle_lag_max_ms": round(max(idle) * 1000, 1),
        "target_p99_ms": TARGET_P99_MS,
        "target_max_ms": TARGET_MAX_MS,
        "edm_peak_rss_mb": round(rss, 1),
        "ok": p99 < TARGET_P99_MS and worst < TARGET_MAX_MS,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(asyncio.run(_measure(Path(sys.argv[2])))))
    else:
        print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
