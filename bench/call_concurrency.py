"""Benchmark: calls to a request-response API from a pipeline (issue 12). A local aiohttp test
API answers every request after 20 ms; an ``async def`` Python function calls it per event
(aiohttp client). The same pipeline runs twice in the same run, on the embedded broker:
``ordering: key`` over 1,000 keys with ``max_in_flight: 1000`` (10,000 events), and
``ordering: partition`` (one call at a time; 500 events, enough for a steady rate).
``ratio`` = concurrent throughput / serial throughput; target >= 20.

The API runs in a thread with its own event loop, so its latency does not depend on edm's loop.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

EVENTS = 10_000
SERIAL_EVENTS = 500
KEYS = 1_000
LATENCY_S = 0.020
TARGET_RATIO = 20.0

FUNCTION = '''
import asyncio
import os

import aiohttp

_sessions = {}


async def call(value):
    """GET the test API; its JSON answer becomes the event's value."""
    loop = asyncio.get_running_loop()
    _session = _sessions.get(loop)
    if _session is None:
        _session = _sessions[loop] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with _session.get(os.environ["EDM_BENCH_API"], params={"seq": str(value["seq"])}) as response:
        return await response.json()
'''

TOPOLOGY = """kind: microservice
name: {name}
broker: {{kind: local, path: {broker}}}
processing: {{max_batch: 1000}}
streams:
  orders: {{topic: {topic}, partitions: 1, key: string, value: json}}
  answers: {{topic: {name}-answers, partitions: 1, key: string, value: json}}
functions:
  call: {{python: api_client:call}}
pipelines:
  enrich:
    from: orders
    processing: {{ordering: {ordering}, max_in_flight: 1000}}
    steps:
      - map_values: call(value)
    to: answers
"""


class TestApi:
    """An aiohttp server in its own thread answering ``{"seq": n}`` after ``LATENCY_S``."""

    def __init__(self) -> None:
        self.url = ""
        self.calls = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        from aiohttp import web

        async def answer(request: web.Request) -> web.Response:
            self.calls += 1
            await asyncio.sleep(LATENCY_S)
            return web.json_response({"seq": int(request.query["seq"])})

        app = web.Application()
        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
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
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


async def _side(directory: Path, ordering: str, count: int) -> float:
    """Seconds for one service to call the API for ``count`` events under ``ordering``."""
    from edm_runner.brokers.base import OutRecord, TopicSpec
    from edm_runner.brokers.local import LocalBroker
    from edm_runner.language import load_file
    from edm_runner.runtime import run_services

    name, topic = f"calls-{ordering}", f"orders-{ordering}"
    path = directory / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(name=name, broker=directory / "broker", topic=topic, ordering=ordering))
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
            raise RuntimeError(f"{ordering}: {stats.events_out} answers for {count} events")
        return elapsed
    finally:
        await broker.close()


def run() -> dict:
    import os

    with tempfile.TemporaryDirectory() as tmp, TestApi() as api:
        directory = Path(tmp)
        (directory / "api_client.py").write_text(FUNCTION)
        os.environ["EDM_BENCH_API"] = api.url
        concurrent_s = asyncio.run(_side(directory, "key", EVENTS))
        serial_s = asyncio.run(_side(directory, "partition", SERIAL_EVENTS))
        calls = api.calls
    concurrent_rate, serial_rate = EVENTS / concurrent_s, SERIAL_EVENTS / serial_s
    ratio = concurrent_rate / serial_rate
    return {"events": EVENTS, "keys": KEYS, "latency_ms": LATENCY_S * 1000, "calls": calls,
            "edm_seconds": round(concurrent_s, 3), "edm_events_per_s": round(concurrent_rate),
            "serial_events": SERIAL_EVENTS, "serial_seconds": round(serial_s, 3),
            "serial_events_per_s": round(serial_rate), "ratio": round(ratio, 2), "target_ratio": TARGET_RATIO,
            "ok": ratio >= TARGET_RATIO}
