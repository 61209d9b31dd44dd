"""Input partitions paused because a step cannot go on for a while (``operators.api.PauseTask``:
a call step's circuit breaker is open), and when each may resume (docs/design/calls.md,
"Pausing partitions during an outage").

Invariants:
- a partition is paused at the consumer from ``pause`` until ``resume_ready`` resumes it, once
  its ``until`` returned (the breaker half-open: the resumed events carry the probe);
- waiting costs nothing: one task per pause awaits ``until``; the runner keeps polling the
  consumer (the group membership, heartbeats and the other partitions go on) and resumes
  what is ready before each fetch;
- a revoked partition is forgotten (``forget``): a rebalance resumes whatever it assigns, and
  the next owner processes it from the committed offset.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Collection

from edm_runner.brokers.base import Consumer, TopicPartition

log = logging.getLogger("edm.runtime")


class Pauses:
    """Logs an outage once per partition, not once per probe: the first pause at WARNING, the
    pauses after a failed probe and the resumes at DEBUG, and at INFO once the partition is
    processed again (``went_on``), with how long it was paused."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._waiting: dict[TopicPartition, asyncio.Task[None]] = {}
        self.since: dict[TopicPartition, tuple[float, int]] = {}  # paused since, pauses: until ``went_on``

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def pause(self, consumer: Consumer, tps: Collection[TopicPartition], until: Callable[[], Awaitable[None]],
              reason: str) -> None:
        """Pauses ``tps`` (sought back by the caller) until ``until()`` returns."""
        waiter = asyncio.get_running_loop().create_task(_await(until))
        for tp in tps:
            self._waiting[tp] = waiter
        consumer.pause(list(tps))
        now = time.monotonic()
        new = [tp for tp in tps if tp not in self.since]
        for tp in tps:
            since, pauses = self.since.get(tp, (now, 0))
            self.since[tp] = (since, pauses + 1)
        if new:
            log.warning("%s: paused %s (not fetched; the service's other inputs go on): %s; resumes when a "
                        "request may be tried again, pauses again while it fails", self.service, _names(new), reason)
        if len(new) < len(tps):
            log.debug("%s: paused %s again: %s", self.service, _names([tp for tp in tps if tp not in new]), reason)

    def resume_ready(self, consumer: Consumer) -> list[TopicPartition]:
        """Resumes the partitions whose ``until`` returned; returns them."""
        ready = [tp for tp, waiter in self._waiting.items() if waiter.done()]
        if ready:
            for tp in ready:
                del self._waiting[tp]
            consumer.resume(ready)
            log.debug("%s: resumed %s", self.service, _names(ready))
        return ready

    def went_on(self, tp: TopicPartition) -> None:
        """``tp`` was processed without a pause: its outage, if it had one, is over."""
        entry = self.since.pop(tp, None)
        if entry is not None:
            log.info("%s: %s processed again after %.1f s paused (%d pause(s))", self.service, _names([tp]),
                     time.monotonic() - entry[0], entry[1])

    def forget(self, tps: Collection[TopicPartition]) -> None:
        """Drops ``tps`` (revoked: their pause ends with the assignment)."""
        for tp in tps:
            self.since.pop(tp, None)
            waiter = self._waiting.pop(tp, None)
            if waiter is not None and waiter not in self._waiting.values():
                waiter.cancel()

    def close(self) -> None:
        self.forget(list(self._waiting))


async def _await(until: Callable[[], Awaitable[None]]) -> None:
    try:
        await until()
    except Exception:  # a failing wait must not keep the partition paused for ever: resume, and try
        log.exception("waiting to resume failed; resuming now")


def _names(tps: Collection[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))
