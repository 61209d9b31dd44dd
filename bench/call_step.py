"""Benchmark: the ``call`` step (issue 12) against a local aiohttp test API answering after
20 ms, on the embedded broker, three sides in one run:

- ``key``: 10,000 events over 1,000 keys, ``ordering: key``, ``max_in_flight: 1000``;
- ``serial``: ``ordering: partition`` (one call at a time), 500 events;
- ``limited``: 3,000 events through a resource of 500 requests/s (burst 1), ``ordering: none``:
  the rate the API saw (calls - 1 over the time from its first to its last call) against the limit.

``ratio`` = key throughput / serial throughput (target >= 20); ``rate_error`` = the measured
rate / the limit - 1 (target: within 5%, never above the limit by more).
"""
from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

EVENTS, SERIAL_EVENTS, LIMITED_EVENTS = 10_000, 500, 3_000
KEYS = 1_000
LATENCY_S = 0.020
RATE = 500
TARGET_RATIO, TARGET_RATE_ERROR = 20.0, 0.05

TOPOLOGY = """kind: microservice
name: {name}
broker: {{kind: local, path: {broker}}}
processing: {{max_batch: 1000}}
resources:
  api: {{rate: {{requests: {rate}, per: 1s}}}}
streams:
  orders: {{topic: {topic}, partitions: 1, key: string, value: json}}
  answers: {{topic: {name}-answers, partitions: 1, key: string, value: json}}
pipelines:
  enrich:
    from: orders
    processing: {{ordering: {ordering}, max_in_flight: 1000}}
    steps:
      - call: {{url: "'{url}?seq=' ~ value.seq", {resources}breaker: false}}
    to: answers
"""


class TestApi:
    """An aiohttp server in its own thread (its latency does not depend on edm's loop)
    answering after ``LATENCY_S``; ``times`` holds the arrival time of every call."""

    def __init__(self) -> None:
        self.url = ""
        self.times: list[float] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        from aiohttp import web

        async def answer(request: web.Request) -> web.Response:
            self.times.append(time.perf_counter())
            await asyncio.sleep(LATENCY_S)
            return web.json_response({"seq": int(request.query["seq"])})

        app = web.Application()
        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> "TestApi":
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join()


async def _side(directory: Path, url: str, name: str, ordering: str, count: int, limited: bool) -> float:
    """Seconds for one service to call the API for ``count`` events."""
    from edm_runner.brokers.base import OutRecord, TopicSpec
    from edm_runner.brokers.local import LocalBroker
    from edm_runner.language import load_file
    from edm_runner.runtime import run_services

    topic = f"orders-{name}"
    path = directory / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(name=name, broker=directory / "broker", topic=topic, ordering=ordering,
                                    url=url, rate=RATE, resources="resources: api, " if limited else ""))
    broker = LocalBroker(directory / "broker")
    await broker.start()
    try:
        await broker.ensure_topics([TopicSpec(topic, 1)])
        await broker.append_and_commit([OutRecord(topic, 0, f"k{n % KEYS}".encode(), json.dumps({"seq": n}).encode(),
                                                  n) for n in range(count)], name, {})
        started = time.perf_counter()
        stats = await run_services([load_file(path)], broker, until_idle=True, state_dir=directory / "state")
        elapsed = time.perf_counter() - started
        if stats.events_out != count:
            raise RuntimeError(f"{name}: {stats.events_out} answers for {count} events")
        return elapsed
    finally:
        await broker.close()


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp, TestApi() as api:
        directory = Path(tmp)
        key_s = asyncio.run(_side(directory, api.url, "calls-key", "key", EVENTS, False))
        serial_s = asyncio.run(_side(directory, api.url, "calls-serial", "partition", SERIAL_EVENTS, False))
        first = len(api.times)
        asyncio.run(_side(directory, api.url, "calls-limited", "none", LIMITED_EVENTS, True))
        limited = api.times[first:]
    key_rate, serial_rate = EVENTS / key_s, SERIAL_EVENTS / serial_s
    ratio = key_rate / serial_rate
    measured = (len(limited) - 1) / (limited[-1] - limited[0])
    error = measured / RATE - 1
    return {"events": EVENTS, "keys": KEYS, "latency_ms": LATENCY_S * 1000,
            "key_seconds": round(key_s, 3), "key_events_per_s": round(key_rate),
            "serial_events": SERIAL_EVENTS, "serial_events_per_s": round(serial_rate),
            "ratio": round(ratio, 2), "target_ratio": TARGET_RATIO,
            "limited_events": LIMITED_EVENTS, "rate_limit_per_s": RATE, "measured_rate_per_s": round(measured, 1),
            "rate_error": round(error, 4), "ok": ratio >= TARGET_RATIO and abs(error) <= TARGET_RATE_ERROR}
