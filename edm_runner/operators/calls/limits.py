"""Named resources shared by ``call`` steps: requests per interval with a burst (a token
bucket), a maximum number of requests in flight, and a quota per period.

Invariant: every limit is PER INSTANCE (per ``edm run`` process): instances do not coordinate.
``divide_by_instances: N`` divides a cluster-wide budget by N (rates, quotas and in-flight caps,
each at least 1 per instance), so N instances together stay within it.

Every wait is an ``asyncio.sleep`` until the moment a permit exists (computed, never polled),
and waiters are served in arrival order, so nothing spins and nobody starves. A request
cancelled while it waits for its rate slot leaves the slot unused (the limiter errs low).

The quota's count survives a restart when the service has a ``QuotaLedger`` (``edm run``:
the instance's LMDB, ``state.calls``): a unit is counted durably before its request goes out,
and a restarted instance continues the count of the current period, so a crash loop or a
replay after ``edm reset`` cannot exceed the quota either.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Protocol

from edm_runner.language.model import ResourceSpec

log = logging.getLogger("edm.calls")

Clock = Callable[[], float]  # seconds, monotonic


class TokenBucket:
    """``rate`` requests per ``per`` seconds with a burst of ``burst``, as the generic cell rate
    algorithm (GCRA, a token bucket kept as one "theoretical arrival time"): ``acquire()``
    reserves the next free slot at once and sleeps until it. Over any window of length T, at
    most ``burst + rate * T / per`` slots fall. Slots follow each other by exactly one interval
    while callers queue, whenever each one actually wakes up, so a saturated limiter runs at
    its rate (a lock-and-sleep bucket loses each sleep's overshoot: 22% below 500/s in the bench)."""

    def __init__(self, rate: int, per: float, burst: int = 1, clock: Clock = time.monotonic) -> None:
        self.interval = per / rate  # seconds per request
        self.tolerance = (burst - 1) * self.interval  # how far ahead of the schedule a request may go
        self.clock = clock
        self._tat = clock()  # the theoretical arrival time of the next request

    def delay(self) -> float:
        """Seconds a request made now would wait (0: it goes at once)."""
        now = self.clock()
        return max(0.0, max(self._tat, now) - self.tolerance - now)

    async def acquire(self) -> None:
        now = self.clock()
        tat = max(self._tat, now)
        self._tat = tat + self.interval
        wait = tat - self.tolerance - now
        if wait > 0:
            await asyncio.sleep(wait)


class QuotaLedger(Protocol):
    """Where a quota's use is kept across restarts (per instance)."""

    async def quota_used(self, resource: str, period_ms: int) -> tuple[int, int] | None:
        """(period index, units used) last counted for ``resource`` with periods of ``period_ms``."""

    async def count(self, resource: str, period_ms: int, index: int, used: int) -> None:
        """Records ``used`` units of period ``index``; returns once that is durable."""


class Quota:
    """At most ``limit`` acquisitions per period of ``period`` seconds, periods aligned on
    ``wall()`` (epoch seconds): when one is used up, ``acquire()`` waits for the next period.

    With a ``ledger``, the first ``acquire`` continues the count the ledger kept for the current
    period, and each ``acquire`` returns only once its unit is counted there: across restarts
    at most ``limit`` units of a period are handed out. Without one the count is in memory."""

    def __init__(self, limit: int, period: float, wall: Clock = time.time, ledger: QuotaLedger | None = None,
                 name: str = "") -> None:
        self.limit = limit
        self.period = period
        self.wall = wall
        self.ledger = ledger
        self.name = name
        self._loaded = ledger is None
        self._period_index = -1
        self._used = 0
        self._announced = -1  # the last period whose end was logged as awaited
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
        period_ms = round(self.period * 1000)
        async with self._lock:
            if not self._loaded:
                assert self.ledger is not None
                saved = await self.ledger.quota_used(self.name, period_ms)
                self._loaded = True
                if saved is not None and saved[0] == math.floor(self.wall() / self.period):
                    self._period_index, self._used = saved
            while (wait := self.delay()) > 0:
                if self._announced != self._period_index:
                    self._announced = self._period_index
                    log.info("resource %r: its quota of %d per %.10g s is used up in this period; its calls wait "
                             "%.0f s for the next one", self.name, self.limit, self.period, wait)
                await asyncio.sleep(wait)
            self._used += 1
            index, used = self._period_index, self._used
        if self.ledger is not None:  # outside the lock: the counts of concurrent requests share a write
            await self.ledger.count(self.name, period_ms, index, used)


class Resource:
    """One named resource of a running service: its limits, shared by every step that names it."""

    def __init__(self, spec: ResourceSpec, clock: Clock = time.monotonic, wall: Clock = time.time,
                 ledger: QuotaLedger | None = None) -> None:
        self.spec = spec = spec.per_instance()
        self.bucket = TokenBucket(spec.rate, spec.per_ms / 1000, spec.burst or 1, clock) if spec.rate else None
        self.quota = (Quota(spec.quota, spec.quota_period_ms / 1000, wall, ledger, spec.name)
                      if spec.quota else None)
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
