"""Benchmark: events accepted over HTTP by an ingest endpoint on Apache Kafka, against `edm produce`
of the same events in the same run (issue 10; target: ratio >= 0.5).

One topology declares two streams of clicks with the same JSON Schema (schemas/click.json) and 4
partitions: `http-clicks`, fed by `POST /clicks` (NDJSON batches of ``BATCH`` events, key from
the `user_id` field), and `cli-clicks`, fed by `edm produce`. The HTTP side: `edm run` serves the
endpoint; a client keeps ``CONCURRENCY`` requests in flight and its time runs from the first
request to the last answer (each a 200: every event acknowledged by Kafka, acks=all). The
baseline: `edm produce cli-clicks -f FILE` of the same events as JSON lines, whose time is its
wall time minus that of the same command with an empty file (interpreter start, imports and
connection, measured in the same run), so both sides count the work per event only.
``ratio`` = HTTP events/s / produce events/s.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import kafka_bootstrap

EVENTS = 100_000
BATCH = 100
CONCURRENCY = 32
PARTITIONS = 4
TARGET_RATIO = 0.5
ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving HTTP on (\S+)")


def _click(i: int) -> dict:
    return {"user_id": f"u{i % 1000}", "page": f"/p/{i % 50}", "at": "2026-11-30T10:00:00Z", "client": "web"}


def _topology(directory: Path, tag: str) -> Path:
    shutil.copy(ROOT / "schemas" / "click.json", directory / "click.json")
    path = directory / "ingest.yaml"
    path.write_text(f"""\
kind: microservice
name: bench-ingest-{tag}
streams:
  http-clicks: {{topic: bench-ingest-http-{tag}, partitions: {PARTITIONS}, key: string,
                 value: {{format: json, schema: click.json}}}}
  cli-clicks: {{topic: bench-ingest-cli-{tag}, partitions: {PARTITIONS}, key: string,
                value: {{format: json, schema: click.json}}}}
  idle: {{topic: bench-ingest-idle-{tag}}}
  idle-out: {{topic: bench-ingest-idle-out-{tag}}}
pipelines:
  nothing: {{from: idle, to: idle-out}}
http:
  listen: "127.0.0.1:0"
  ingest:
    - {{path: /clicks, stream: http-clicks, key: {{field: user_id}}}}
""")
    return path


def _serving_url(log: Path, proc: subprocess.Popen, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        found = SERVING.search(log.read_text(errors="replace"))
        if found:
            return found[1]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"edm run did not serve HTTP:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)  # the line comes from another process: polled


async def _post_all(url: str, events: int) -> float:
    import aiohttp

    bodies = [("\n".join(json.dumps(_click(i)) for i in range(start, min(start + BATCH, events))) + "\n").encode()
              for start in range(0, events, BATCH)]
    queue = iter(bodies)
    headers = {"Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            for body in queue:
                async with session.post(f"{url}/clicks", data=body, headers=headers) as response:
                    answer = await response.json()
                    if response.status != 200 or answer["accepted"] != body.count(b"\n"):
                        raise RuntimeError(f"POST /clicks answered {response.status}: {str(answer)[:500]}")

        async with session.post(f"{url}/clicks", data=bodies[0][:bodies[0].index(b"\n") + 1],
                                headers=headers) as warm:  # connects the producer
            await warm.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started


def _produce_seconds(topology: Path, bootstrap: str, lines: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edm_runner", "produce", "cli-clicks", "-t", str(topology), "-f",
                    str(lines), "--broker", f"kafka://{bootstrap}"], check=True, capture_output=True)
    return time.perf_counter() - started


def _scenario(bootstrap: str, events: int, directory: Path) -> dict:
    import uuid

    tag = uuid.uuid4().hex[:8]
    topology = _topology(directory, tag)
    log = directory / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), "--broker",
                                 f"kafka://{bootstrap}", "--state-dir", str(directory / "state")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = _serving_url(log, proc)
        http_seconds = asyncio.run(_post_all(url, events))
    finally:
        proc.terminate()
        proc.wait(60)
    lines = directory / "clicks.jsonl"
    lines.write_text("".join(json.dumps({"key": c["user_id"], "value": c}) + "\n"
                             for c in map(_click, range(events))))
    empty = directory / "empty.jsonl"
    empty.write_text("")
    _produce_seconds(topology, bootstrap, empty)  # topics exist, bytecode cached: both runs alike
    overhead = _produce_seconds(topology, bootstrap, empty)
    produce_seconds = _produce_seconds(topology, bootstrap, lines) - overhead
    http_rate, produce_rate = events / http_seconds, events / produce_seconds
    ratio = http_rate / produce_rate
    return {"events": events, "batch": BATCH, "concurrency": CONCURRENCY, "partitions": PARTITIONS,
            "http_seconds": round(http_seconds, 3), "http_events_per_s": round(http_rate),
            "produce_seconds": round(produce_seconds, 3), "produce_events_per_s": round(produce_rate),
            "produce_overhead_seconds": round(overhead, 3), "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO, "ok": ratio >= TARGET_RATIO}


def run(events: int = EVENTS) -> dict:
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="edm-bench-ingest-") as tmp:
        return _scenario(bootstrap, events, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else EVENTS), indent=2))
