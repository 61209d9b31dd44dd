"""Restore progress, reported to whoever shows it: the state package draws nothing.

A ``RestoreProgress`` sends ``Progress`` snapshots to the observer installed with ``observe``
(`edm run` on a terminal renders a bar), at most every ``redraw_s`` and once at the end;
without an observer it logs a line every ``interval_s`` and a final line, which is what a
service without a terminal (a container) shows.

The unit is changelog offsets (compaction gaps count as done), so a restore reaches 100 %
exactly when every restored partition reaches its end offset.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = ["Progress", "RestoreProgress", "observe"]

log = logging.getLogger("edm.state")

_REDRAW_S = 0.1


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Progress:
    """A snapshot of one restore: ``done`` of ``total`` offsets after ``elapsed_s``;
    ``final`` on the last snapshot (then ``done`` may stay below ``total`` when it failed)."""

    label: str
    done: int
    total: int
    elapsed_s: float
    final: bool = False

    @property
    def rate(self) -> float:
        """Offsets per second since the start."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, self.done * 100 // self.total)

    def line(self) -> str:
        """The status as text, e.g. ``restoring counts 45% 450000/1000000 offsets 120,000/s ETA 5s``."""
        rate = self.rate
        eta = (f" ETA {_duration((self.total - self.done) / rate)}"
               if rate > 0 and self.done < self.total else "")
        return f"{self.label} {self.percent}% {self.done}/{self.total} offsets {rate:,.0f}/s{eta}"


Observer = Callable[[Progress], None]

# Installed by the command that shows progress, read when a restore starts: the tasks that
# restore are created after it, inside the context it was set in.
_observer: ContextVar[Observer | None] = ContextVar("edm_restore_observer", default=None)


@contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Within the block (and the asyncio tasks started in it), restores report to ``observer``."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


class RestoreProgress:
    """Tracks ``done`` of ``total`` offsets for ``label`` (e.g. "restoring counts"). Reports to
    ``observer``, by default the one ``observe`` installed, else to the log."""

    def __init__(self, label: str, total: int, *, observer: Observer | None = None,
                 interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = max(0, total)
        self.done = 0
        self._observer = observer if observer is not None else _observer.get()
        self._interval = _REDRAW_S if self._observer is not None else interval_s
        self._clock = clock
        self._started = clock()
        self._last_report = self._started

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if now - self._last_report >= self._interval:
            self._last_report = now
            self._report(self.snapshot(now))

    def finish(self) -> None:
        self._report(self.snapshot(final=True))

    def snapshot(self, now: float | None = None, *, final: bool = False) -> Progress:
        now = self._clock() if now is None else now
        return Progress(self.label, self.done, self.total, now - self._started, final)

    def _report(self, progress: Progress) -> None:
        if self._observer is not None:
            self._observer(progress)
        elif progress.final:
            log.info("%s done: %d offsets in %s (%s/s)", self.label, progress.done,
                     _duration(progress.elapsed_s), f"{progress.rate:,.0f}")
        else:
            log.info("%s", progress.line())
