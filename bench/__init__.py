"""Benchmark scenarios. ``python -m bench [SCENARIO...]`` prints one JSON object per scenario.

A scenario is a module with ``run() -> dict`` registered in ``bench.__main__.SCENARIOS``. Its
result holds at least ``ratio`` (edm throughput / baseline throughput, both measured in the
same run; higher is better), ``target`` (the lowest acceptable ratio) and the raw figures
behind the ratio. A scenario whose prerequisites are missing raises ``Skipped(why)``.
"""
from __future__ import annotations

import timeit
from typing import Callable, Mapping


class Skipped(Exception):
    """A scenario cannot run here (e.g. no Kafka); the message says why."""


def best_times(candidates: Mapping[str, Callable[[], object]], *, repeat: int = 9,
               min_seconds: float = 0.01) -> dict[str, float]:
    """Best-of-``repeat`` seconds per call of each candidate, timeit style.

    Each candidate is calibrated to run at least ``min_seconds`` per measurement, and the
    candidates' measurements are interleaved so that noise from other processes hits all of
    them alike; the minimum is the figure least disturbed by that noise.
    """
    timers = {name: timeit.Timer(fn) for name, fn in candidates.items()}
    numbers = {}
    for name, timer in timers.items():
        number = 1
        while timer.timeit(number) < min_seconds:
            number *= 2
        numbers[name] = number
    best = {name: float("inf") for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(numbers[name]) / numbers[name])
    return best
