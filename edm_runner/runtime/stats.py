"""Counters of a run, per service and in total."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServiceStats:
    """``events_in`` and ``events_out`` count the records read from and written to the user's
    streams (those the topology declares); ``internal_in`` and ``internal_out`` the records that
    went through the service's repartition topics (changelogs are in neither). Dead letters
    are counted in ``dead_lettered`` only. ``skipped_by_pipeline`` sums to ``skipped``.
    ``restored``: changelog (or table source) records applied by restores since start, in
    ``restore_seconds`` of wall time (opening the tasks' state included).
    ``late``: window events dropped or dead-lettered as late (also in ``dead_lettered`` when
    dead-lettered)."""

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
