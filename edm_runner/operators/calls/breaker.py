"""A circuit breaker per endpoint (scheme://host:port).

States: closed (calls go through; ``threshold`` consecutive failures open it), open (no call
goes out: a caller gets ``PauseTask``, and the runtime pauses its task's partitions until
``ready``, the end of ``open_for``), half-open (exactly one caller, the probe, goes out; the
others wait for its outcome; its success closes the breaker and wakes every waiter, its failure
opens it again for ``open_for`` and the waiters get ``PauseTask``).

Invariants: while the breaker is not closed at most one request is out (the probe); no caller
waits on an open breaker inside a run (a run held for the whole outage would hold the consumer's
poll: on Kafka the member would leave its group after ``max_poll_interval_ms``); a caller that
meets an open breaker uses no retry attempt: an outage pauses the events instead of
dead-lettering them.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Literal

from edm_runner.operators.api import PauseTask

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, threshold: int = 5, open_for: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 name: str = "the endpoint") -> None:
        self.name = name
        self.threshold = threshold
        self.open_for = open_for
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._changed = asyncio.Event()  # set (and replaced) whenever the state changes
        self.opened = 0  # how many times it opened (stats, tests)

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.open_for else "open"

    async def permit(self) -> bool:
        """Waits until a request may go out; True when that request is the probe (its outcome
        must be reported with ``success``/``failure``). Raises ``PauseTask`` while the breaker
        is open (also when the probe this caller waited for failed)."""
        while True:
            state = self.state
            if state == "closed":
                return False
            if state == "open":
                raise PauseTask(f"the circuit breaker of {self.name} is open for {self.open_for:g} s "
                                f"after {self.threshold} failure(s)", self.ready)
            if not self._probing:
                self._probing = True
                return True
            await self._changed.wait()  # half-open, the probe out: its outcome (bounded by its timeout)

    async def ready(self) -> None:
        """Returns once the breaker is no longer open (half-open: a probe may go; or closed)."""
        while self.state == "open":
            assert self.opened_at is not None
            try:
                await asyncio.wait_for(self._changed.wait(), self.opened_at + self.open_for - self.clock())
            except asyncio.TimeoutError:
                pass

    def success(self, probe: bool) -> None:
        self.failures = 0
        if probe or self.opened_at is not None:
            self._probing = False
            self.opened_at = None
            self._notify()

    def failure(self, probe: bool) -> None:
        if probe:
            self._probing = False
            self.opened_at = self.clock()
            self.opened += 1
            self._notify()
            return
        if self.opened_at is not None:
            return  # a request sent before it opened: the breaker is already open
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()
            self.opened += 1
            self._notify()

    def release(self, probe: bool) -> None:
        """The probe ended with neither outcome (cancelled): let another caller probe."""
        if probe:
            self._probing = False
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
