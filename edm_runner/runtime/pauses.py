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
from typing import Awaitable, Callable, Collection

from edm_runner.brokers.base import Consumer, TopicPartition

log = logging.getLogger("edm.runtime")


class Pauses:
    def __init__(self, service: str) -> None:
        self.service = service
        self._waiting: dict[TopicPartition, asyncio.Task[None]] = {}

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._waiting

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def pause(self, consumer: Consumer, tps: Collection[TopicPartition], until: Callable[[], Awaitable[None]],
              reason: str) -> None:
        """Pauses ``tps`` (sought back by the caller) until ``until()`` returns."""
        waiter = asyncio.get_running_loop().create_task(_await(until))
        for tp in tps:
            self._waiting[tp] = waiter
        consumer.pause(list(tps))
        log.info("%s: paused %s: %s; resumes when a request may be tried", self.service, _names(tps), reason)

    def resume_ready(self, consumer: Consumer) -> list[TopicPartition]:
        """Resumes the partitions whose ``until`` returned; returns them."""
        ready = [tp for tp, waiter in self._waiting.items() if waiter.done()]
        if ready:
            for tp in ready:
                del self._waiting[tp]
            consumer.resume(ready)
            log.info("%s: resumed %s", self.service, _names(ready))
        return ready

    def forget(self, tps: Collection[TopicPartition]) -> None:
        """Drops ``tps`` (revoked: their pause ends with the assignment)."""
        for tp in tps:
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
