"""A real HTTP server (aiohttp) standing for a third-party API in the ``call`` step's tests.

It answers ``GET|POST /items/{key}`` with ``{"key", "n", "echo"}`` (n: how many calls that key
got so far, echo: the JSON body sent) and records every call (time, method, key, headers). Knobs,
changed while it runs: ``latency`` (seconds before answering), ``script`` (answers to give first,
one per call: a status, optionally with headers, e.g. ``(429, {"Retry-After": "1"})``),
``fail_keys`` (key -> status, always), ``outage`` (503 to everything while set), ``hang``
(never answer in time). ``calls_seen`` is an asyncio-free counter tests can await through
``wait_calls`` on the server's loop, or poll from a thread with ``threading.Event`` ``reached``.

Run as a script (``python tests/helpers/fake_api.py PORT``) for subprocess tests and the example.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Call:
    at: float  # time.monotonic() when the request arrived
    method: str
    key: str
    headers: dict[str, str]
    body: Any
    status: int | None = None  # set when answered


@dataclass
class FakeApi:
    latency: float = 0.0
    script: list[Any] = field(default_factory=list)
    fail_keys: dict[str, int] = field(default_factory=dict)
    outage: bool = False
    hang: bool = False
    calls: list[Call] = field(default_factory=list)
    per_key: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)  # status -> count
    open_peak: int = 0  # the most requests open at once
    _open: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _targets: list[tuple[int, threading.Event]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        raw = await request.read()
        body = json.loads(raw) if raw else None
        call = Call(time.monotonic(), request.method, key, dict(request.headers), body)
        self.calls.append(call)
        self.per_key[key] += 1
        for target, event in self._targets:
            if len(self.calls) >= target:
                event.set()
        self._open += 1
        self.open_peak = max(self.open_peak, self._open)
        try:
            if self.hang:
                await self._stopping.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self._open -= 1
        status, headers = 200, {}
        if self.script:
            answer = self.script.pop(0)
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
        elif self.outage:
            status = 503
        elif key in self.fail_keys:
            status = self.fail_keys[key]
        self.answered[status] += 1
        call.status = status
        payload = {"key": key, "n": self.per_key[key], "echo": body} if status < 400 else {"error": f"status {status}"}
        return web.json_response(payload, status=status, headers=headers)

    async def start(self, port: int = 0) -> "FakeApi":
        app = web.Application()
        app.router.add_route("*", "/items/{key}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._stopping.set()  # answers hanging requests, so the server stops at once
        if self._runner is not None:
            await self._runner.cleanup()

    def reached(self, count: int) -> threading.Event:
        """An event set once ``count`` calls have arrived (for tests driving from another thread)."""
        event = threading.Event()
        if len(self.calls) >= count:
            event.set()
        self._targets.append((count, event))
        return event

    # In a thread of its own, for tests that run edm in a subprocess or in their own loop.
    def start_in_thread(self) -> "FakeApi":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(30)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def max_in_window(self, window: float) -> int:
        """The most calls that arrived within any ``window`` seconds (rate-limit checks)."""
        times = sorted(c.at for c in self.calls)
        best, j = 0, 0
        for i, t in enumerate(times):
            while t - times[j] >= window:
                j += 1
            best = max(best, i - j + 1)
        return best


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
    api = FakeApi(latency=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)

    async def serve() -> None:
        await api.start(port)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
