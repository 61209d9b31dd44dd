"""The event that flows through a pipeline.

Invariant: an ``Event`` object belongs to exactly one batch at a time (a branch hands each
event to one child; every source node decodes its own events), so steps may update
``key``/``value`` in place once their new values are all computed.
"""
from __future__ import annotations

from typing import Any

from edm_runner.brokers.base import Headers, Record
from edm_runner.errors import EventError

# The latest event time accepted: 9999-12-31T23:59:59.999Z. With every duration at most 100 years
# (spec.durations.MAX_DURATION_MS), every window start, end, join bound and retention mark computed
# from an accepted time stays far inside the signed 64 bits that stores and record timestamps hold,
# so no time computation downstream needs its own check.
MAX_EVENT_TIME_MS = 253_402_300_799_999


def event_time(t: Any) -> int:
    """``t`` as the time of an event for windows and joins, or EventError (an error of that event,
    which follows the pipeline's on_error): an integer of ms in [0, MAX_EVENT_TIME_MS]."""
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise EventError(f"the event time must be a non-negative integer of milliseconds, got {t!r}")
    if t > MAX_EVENT_TIME_MS:
        raise EventError(f"the event time {t} ms is past the latest time edm accepts, {MAX_EVENT_TIME_MS} "
                         f"(9999-12-31T23:59:59.999Z); is it in micro- or nanoseconds?")
    return t


class Event:
    """A decoded event. ``origin`` is the broker record it came from (kept for dead letters).

    ``old`` is set only on table-change events (a pipeline ``from:`` a table): the key's value
    before the change (None when the key was new); ``value`` None means the key was deleted.
    """

    __slots__ = ("key", "value", "timestamp", "headers", "origin", "old")

    def __init__(self, key: Any, value: Any, timestamp: int, headers: Headers, origin: Record,
                 old: Any = None) -> None:
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.headers = headers
        self.origin = origin
        self.old = old

    @property
    def topic(self) -> str:
        return self.origin.topic

    @property
    def partition(self) -> int:
        return self.origin.partition

    @property
    def offset(self) -> int:
        return self.origin.offset

    @property
    def header_map(self) -> dict[str, str]:
        """The headers as text (what expressions see as ``headers``); later duplicates win."""
        return {k: v.decode("utf-8", "replace") for k, v in self.headers}

    def derive(self, key: Any, value: Any) -> "Event":
        """A new event with the same timestamp, headers and origin (flat_map outputs)."""
        return Event(key, value, self.timestamp, self.headers, self.origin)

    def __repr__(self) -> str:
        return f"Event(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp})"
