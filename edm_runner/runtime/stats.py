"""Counters of a run, per service and in total.

The processing loop updates them per batch (never per event where a batch figure will do);
the metrics endpoint (``serve.metrics``) reads them when it is scraped, so a run without an
HTTP side pays for plain integer additions only.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

# Upper bounds (seconds) of the latency histograms: a batch takes from well under a
# millisecond (a few stateless events) to seconds (a flush to a slow broker).
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0)


@dataclass
class Latency:
    """A histogram of durations: ``counts[i]`` durations in (bound i-1, bound i] of
    ``LATENCY_BUCKETS``, the last one above every bound; ``sum`` of all, in seconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class StoreRestore:
    """One store's restore in one task (or the global tables: task ``global``): ``done`` of
    ``total`` offsets, started and (once done) finished at ``time.monotonic`` instants."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def advance(self, n: int) -> None:
        self.done += n

    @property
    def rate(self) -> float:
        """Offsets per second of this restore, so far (or overall once finished)."""
        elapsed = (self.finished if self.finished is not None else time.monotonic()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


@dataclass
class ServiceStats:
    """``events_in`` and ``events_out`` count the records read from and written to the user's
    streams (those the topology declares); ``internal_in`` and ``internal_out`` the records that
    went through the service's repartition topics (changelogs are in neither). Dead letters
    are counted in ``dead_lettered`` only. ``skipped_by_pipeline`` sums to ``skipped``.
    ``restored``: changelog (or table source) records applied by restores since start, in
    ``restore_seconds`` of wall time (opening the tasks' state included).
    ``late``: window events dropped or dead-lettered as late (also in ``dead_lettered`` when
    dead-lettered).

    Per pipeline (``pipeline`` as in the file; a table's materialization is ``tables.<name>``):
    ``in_by_pipeline[(pipeline, topic)]`` records it read from each topic (internal ones
    included), ``out_by_pipeline`` records its sinks wrote (internal topics included, dead
    letters not), ``dead_lettered_by_pipeline`` and ``late_by_pipeline``; ``errors_by_step
    [(pipeline, step, policy)]`` events a step failed on, by the policy applied (skip,
    dead_letter; a ``fail`` stops the service). ``processing``: the time each batch took to
    process, ``commit``: each commit (flush, store write, offsets). ``rebalances``: assignments
    this member received (the first included). ``restores[(store, task)]``: the latest restore
    of each store per task; ``restored_by_store`` sums their records."""

    events_in: int = 0
    events_out: int = 0
    internal_in: int = 0
    internal_out: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    skipped_by_pipeline: dict[str, int] = field(default_factory=dict)
    restored: int = 0
    restore_seconds: float = 0.0
    late: int = 0
    in_by_pipeline: dict[tuple[str, str], int] = field(default_factory=dict)
    out_by_pipeline: dict[str, int] = field(default_factory=dict)
    dead_lettered_by_pipeline: dict[str, int] = field(default_factory=dict)
    late_by_pipeline: dict[str, int] = field(default_factory=dict)
    errors_by_step: dict[tuple[str, str, str], int] = field(default_factory=dict)
    processing: Latency = field(default_factory=Latency)
    commit: Latency = field(default_factory=Latency)
    rebalances: int = 0
    restores: dict[tuple[str, str], StoreRestore] = field(default_factory=dict)
    restored_by_store: dict[str, int] = field(default_factory=dict)


@dataclass
class RunStats:
    services: dict[str, ServiceStats] = field(default_factory=dict)

    @property
    def events_in(self) -> int:
        return sum(s.events_in for s in self.services.values())

    @property
    def events_out(self) -> int:
        return sum(s.events_out for s in self.services.values())

    @property
    def internal_in(self) -> int:
        return sum(s.internal_in for s in self.services.values())

    @property
    def internal_out(self) -> int:
        return sum(s.internal_out for s in self.services.values())

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.services.values())

    @property
    def dead_lettered(self) -> int:
        return sum(s.dead_lettered for s in self.services.values())

    @property
    def restored(self) -> int:
        return sum(s.restored for s in self.services.values())

    @property
    def late(self) -> int:
        return sum(s.late for s in self.services.values())
