"""Restore progress: a one-line bar on a TTY, otherwise a log line every ``interval_s``.

The unit is changelog offsets (compaction gaps count as done), so the bar reaches 100 %
exactly when every restored partition reaches its end offset.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

log = logging.getLogger("edm.state")

_BAR = 30
_TTY_REDRAW_S = 0.1


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RestoreProgress:
    """Tracks ``done`` of ``total`` offsets for ``label`` (e.g. "restoring counts").
    ``tty`` defaults to whether ``stream`` (default stderr) is a terminal."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 tty: bool | None = None, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = max(0, total)
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval = _TTY_REDRAW_S if self._tty else interval_s
        self._clock = clock
        self._started = clock()
        self._last_report = self._started

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if now - self._last_report >= self._interval:
            self._last_report = now
            self._report(now, final=False)

    def finish(self) -> None:
        self._report(self._clock(), final=True)

    def _rate(self, now: float) -> float:
        elapsed = now - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """The current status, e.g. ``restoring counts 45% 450000/1000000 120000/s ETA 5s``."""
        now = self._clock() if now is None else now
        rate = self._rate(now)
        pct = 100 if self.total == 0 else min(100, self.done * 100 // self.total)
        eta = (f" ETA {_duration((self.total - self.done) / rate)}"
               if rate > 0 and self.done < self.total else "")
        return f"{self.label} {pct}% {self.done}/{self.total} offsets {rate:,.0f}/s{eta}"

    def _report(self, now: float, *, final: bool) -> None:
        if self._tty:
            filled = _BAR if self.total == 0 else min(_BAR, self.done * _BAR // self.total)
            bar = "#" * filled + "-" * (_BAR - filled)
            self._stream.write(f"\r[{bar}] {self.line(now)}\x1b[K" + ("\n" if final else ""))
            self._stream.flush()
        elif final:
            log.info("%s done: %d offsets in %s (%s/s)", self.label, self.done,
                     _duration(now - self._started), f"{self._rate(now):,.0f}")
        else:
            log.info("%s", self.line(now))
