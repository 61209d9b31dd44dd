"""Named resources shared by ``call`` steps: requests per interval with a burst (a token
bucket), a maximum number of requests in flight, and a quota per period.

Invariant: every limit is PER INSTANCE (per ``edm run`` process): instances do not coordinate.
``divide_by_instances: N`` divides a cluster-wide budget by N (rates, quotas and in-flight caps,
each at least 1 per instance), so N instances together stay within it.

Every wait is an ``asyncio.sleep`` until the moment a permit exists (computed, never polled),
and waiters are served in arrival order, so nothing spins and nobody starves.
"""
from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from edm_runner.language.model import ResourceSpec

Clock = Callable[[], float]  # seconds, monotonic


class TokenBucket:
    """``rate`` tokens per ``per`` seconds, at most ``burst`` stored. ``acquire()`` takes one,
    waiting (in arrival order) until it exists. Over any window of length T, at most
    ``burst + rate * T / per`` acquisitions succeed."""

    def __init__(self, rate: int, per: float, burst: int = 1, clock: Clock = time.monotonic) -> None:
        self.interval = per / rate  # seconds per token
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
        self._at = now

    def delay(self) -> float:
        """Seconds until a token exists (0: one is there now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) * self.interval

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: asyncio.Lock wakes waiters in order
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
            self._tokens -= 1


class Quota:
    """At most ``limit`` acquisitions per period of ``period`` seconds, periods aligned on
    ``wall()`` (epoch seconds): when one is used up, ``acquire()`` waits for the next period.
    Kept in memory: a restart starts the current period over (say so in the docs)."""

    def __init__(self, limit: int, period: float, wall: Clock = time.time) -> None:
        self.limit = limit
        self.period = period
        self.wall = wall
        self._period_index = -1
        self._used = 0
        self._lock = asyncio.Lock()

    def remaining(self) -> int:
        index = math.floor(self.wall() / self.period)
        if index != self._period_index:
            self._period_index, self._used = index, 0
        return self.limit - self._used

    def delay(self) -> float:
        """Seconds until a unit is available (0: now)."""
        if self.remaining() > 0:
            return 0.0
        return (self._period_index + 1) * self.period - self.wall()

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
            self._used += 1


class Resource:
    """One named resource of a running service: its limits, shared by every step that names it."""

    def __init__(self, spec: ResourceSpec, clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.spec = spec = spec.per_instance()
        self.bucket = TokenBucket(spec.rate, spec.per_ms / 1000, spec.burst or 1, clock) if spec.rate else None
        self.quota = Quota(spec.quota, spec.quota_period_ms / 1000, wall) if spec.quota else None
        self.slots = asyncio.Semaphore(spec.max_in_flight) if spec.max_in_flight else None

    async def admit(self) -> None:
        """Wait for a unit of quota and a token (one request about to be sent)."""
        if self.quota is not None:
            await self.quota.acquire()
        if self.bucket is not None:
            await self.bucket.acquire()

    @asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        if self.slots is None:
            yield
            return
        async with self.slots:
            yield


@asynccontextmanager
async def request_slot(resources: list[Resource]) -> AsyncIterator[None]:
    """Holds an in-flight slot of every resource (taken in name order, so two steps naming the
    same resources never deadlock) and admits the request against each one's rate and quota."""
    ordered = sorted(resources, key=lambda r: r.spec.name)
    async with _slots(ordered):
        for r in ordered:
            await r.admit()
        yield


@asynccontextmanager
async def _slots(resources: list[Resource]) -> AsyncIterator[None]:
    if not resources:
        yield
        return
    async with resources[0].in_flight(), _slots(resources[1:]):
        yield
