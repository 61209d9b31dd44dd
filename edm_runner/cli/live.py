"""What `edm run` draws on a terminal, with rich on stderr: a bar per restore in progress and
the live `in/out` status line, below the log lines. Without a terminal nothing is drawn:
restores report as log lines (``state.progress``) and the run ends with its summary line."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TaskID, TaskProgressColumn, TextColumn, \
    TimeRemainingColumn
from rich.text import Text

if TYPE_CHECKING:
    from edm_runner.runtime import RunStats
    from edm_runner.state.progress import Progress

__all__ = ["LiveDisplay"]


class LiveDisplay:
    """A context manager: while open, ``restore`` and ``stats`` (callbacks of the runtime,
    thread-safe as rich is) update the live lines, and log records print above them."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bars = Bars(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                          MofNCompleteColumn(), TextColumn("offsets {task.fields[rate]}"), TimeRemainingColumn(),
                          console=console)
        self._restores: dict[str, TaskID] = {}
        self._status = Text()
        self._last: tuple[float, int, int] | None = None
        self._live = Live(Group(self._bars, self._status), console=console, refresh_per_second=4,
                          redirect_stdout=False, redirect_stderr=False)
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        for handler in logging.getLogger().handlers:  # a log line would otherwise cut through the live lines
            if isinstance(handler, logging.StreamHandler):
                self._handlers.append((handler, handler.stream))
                handler.setStream(FileProxy(self._console, handler.stream))
        return self

    def __exit__(self, *_: object) -> None:
        for handler, stream in self._handlers:
            handler.flush()
            handler.setStream(stream)
        self._live.stop()

    def restore(self, progress: Progress) -> None:
        """A bar while ``progress.label`` restores; its last state stays printed as a line."""
        task = self._restores.get(progress.label)
        if task is None:
            task = self._restores[progress.label] = self._bars.add_task(progress.label, total=progress.total,
                                                                         rate="")
        self._bars.update(task, completed=progress.done, total=progress.total, rate=f"{progress.rate:,.0f}/s")
        if progress.final:
            self._bars.remove_task(self._restores.pop(progress.label))
            self._console.print(progress.line(), markup=False, highlight=False)

    def stats(self, stats: RunStats) -> None:
        """The status line: events in and out (with their rates since the last call), skipped and
        dead-lettered."""
        now = time.monotonic()
        rate_in = rate_out = 0.0
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            rate_in = (stats.events_in - self._last[1]) / elapsed
            rate_out = (stats.events_out - self._last[2]) / elapsed
        self._last = (now, stats.events_in, stats.events_out)
        self._status.plain = (f"[edm] in {stats.events_in} ({rate_in:,.0f}/s)  out {stats.events_out} "
                              f"({rate_out:,.0f}/s)  skipped {stats.skipped}  dead-lettered {stats.dead_lettered}")
