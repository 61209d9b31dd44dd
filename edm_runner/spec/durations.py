"""Durations in topology files: an integer of milliseconds, or a number with a unit.

Invariant: a value accepted by ``DURATION_SCHEMA`` is accepted by ``parse_duration`` and vice
versa (both use ``DURATION_PATTERN`` for strings), so a schema-valid file never fails later.
"""
from __future__ import annotations

import re
from typing import Any

from edm_runner.errors import EdmError

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_PATTERN = "^[0-9]+(ms|s|m|h|d)$"
DURATION_WORDS = "an integer of milliseconds or 250ms, 30s, 15m, 1h, 2d"

DURATION_SCHEMA: dict = {
    "description": f"A duration: {DURATION_WORDS}.",
    "oneOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
}


class DurationError(EdmError, ValueError):
    """A value is not a duration."""


def parse_duration(value: Any) -> int:
    """``value`` in milliseconds: ``250`` -> 250, ``"30s"`` -> 30000, ``"2d"`` -> 172800000.

    Raises ``DurationError`` for anything else (negative numbers, floats, booleans, other units).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise DurationError(f"{value} is not a duration: it must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(DURATION_PATTERN, value)
        if m:
            return int(value[: m.start(1)]) * _UNITS_MS[m[1]]
        raise DurationError(f"'{value}' is not a duration: use {DURATION_WORDS}")
    raise DurationError(f"{value!r} is not a duration: use {DURATION_WORDS}")
