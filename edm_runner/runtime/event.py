"""The event that flows through a pipeline.

Invariant: an ``Event`` object belongs to exactly one batch at a time (a branch hands each
event to one child; every source node decodes its own events), so steps may update
``key``/``value`` in place once their new values are all computed.
"""
from __future__ import annotations

from typing import Any

from edm_runner.brokers.base import Headers, Record


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
