"""Durations in topology files: an integer of milliseconds, or a number with a unit.

Invariant: a value accepted by ``DURATION_SCHEMA`` is accepted by ``parse_duration`` and vice
versa (both use ``DURATION_PATTERN`` for strings and ``within_bounds`` for their size, the
schema as its ``duration`` format), so a schema-valid file never fails later. Every duration
is at most ``MAX_DURATION_MS`` (100 years), so times computed from one stay far inside 64 bits.
``POSITIVE_DURATION_SCHEMA`` also refuses 0, for the lengths that divide (window sizes, gaps).
"""
from __future__ import annotations

import re
from typing import Any

from edm_runner.errors import EdmError

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_PATTERN = "^[0-9]+(ms|s|m|h|d)$"
POSITIVE_DURATION_PATTERN = "^0*[1-9][0-9]*(ms|s|m|h|d)$"
DURATION_WORDS = "an integer of milliseconds or 250ms, 30s, 15m, 1h, 2d"
MAX_DURATION_MS = 36_500 * 86_400_000
MAX_DURATION_WORDS = "36500d (100 years)"

DURATION_SCHEMA: dict = {
    "description": f"A duration: {DURATION_WORDS}.",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_DURATION_MS},
        {"type": "string", "pattern": DURATION_PATTERN, "format": "duration"},
    ],
}
POSITIVE_DURATION_SCHEMA: dict = {
    "description": f"A duration longer than 0: {DURATION_WORDS}.",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_DURATION_MS},
        {"type": "string", "pattern": POSITIVE_DURATION_PATTERN, "format": "duration"},
    ],
}


def within_bounds(value: Any) -> bool:
    """False only for a duration string (``DURATION_PATTERN``) longer than the longest."""
    m = re.fullmatch(DURATION_PATTERN, value) if isinstance(value, str) else None
    return m is None or int(value[: m.start(1)]) * _UNITS_MS[m[1]] <= MAX_DURATION_MS


class DurationError(EdmError, ValueError):
    """A value is not a duration."""


def parse_duration(value: Any) -> int:
    """``value`` in milliseconds: ``250`` -> 250, ``"30s"`` -> 30000, ``"2d"`` -> 172800000.

    Raises ``DurationError`` for anything else (negative numbers, floats, booleans, other units).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise DurationError(f"{value} is not a duration: it must not be negative")
        if value > MAX_DURATION_MS:
            raise DurationError(f"{value} is longer than the longest duration, {MAX_DURATION_WORDS}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(DURATION_PATTERN, value)
        if m and not within_bounds(value):
            raise DurationError(f"'{value}' is longer than the longest duration, {MAX_DURATION_WORDS}")
        if m:
            return int(value[: m.start(1)]) * _UNITS_MS[m[1]]
        raise DurationError(f"'{value}' is not a duration: use {DURATION_WORDS}")
    raise DurationError(f"{value!r} is not a duration: use {DURATION_WORDS}")
