"""What stateful operators share: where a step sits in its pipeline, and how it processes.

A change of a table (a pipeline ``from:`` a table, the other side of a table-table join, or
a group_by topic fed by a table) is an event whose ``value`` is the new value (None: deleted)
and whose ``old`` is the previous one (None: new key); the runtime sets both.

``EventwiseProcessor``: stateful steps process a batch event by event and remember each
event's outputs, so when ``process`` raises at event i the runtime's per-event replay
(``process_one``) returns the remembered outputs of events 0..i-1 instead of applying them to
the store a second time. Each event computes everything that can fail before its first store
write, so a failing event leaves no write behind.
"""
from __future__ import annotations

from typing import Callable

from edm_runner.runtime.event import Event
from edm_runner.runtime.node import BuildContext, Processor
from edm_runner.spec.model import StepSpec


def reads_table(ctx: BuildContext) -> bool:
    """Whether the building pipeline reads a table (its events are table changes)."""
    return any(s in ctx.topology.tables for s in ctx.topology.pipelines[ctx.pipeline].sources)


def steps_before(ctx: BuildContext, step: StepSpec) -> list[StepSpec]:
    """The steps an event passes through before ``step`` in its pipeline (a branch arm's
    steps come after the pipeline's own)."""
    p = ctx.topology.pipelines[ctx.pipeline]
    for i, s in enumerate(p.steps):
        if s is step:
            return p.steps[:i]
    for arm in p.branch:
        for i, s in enumerate(arm.steps):
            if s is step:
                return p.steps + arm.steps[:i]
    raise ValueError(f"step {step.op} at {step.pos} is not in pipeline {ctx.pipeline!r}")


class EventwiseProcessor(Processor):
    """A step that applies events one at a time to state (see the module docstring).

    Subclasses implement ``begin()`` (fetch the current task's stores; called once per call),
    ``apply(event)`` and optionally ``apply_other(event)`` (a join's other side) and
    ``end(last_event)`` (work done once per batch after its events, e.g. emitting closed
    windows; its progress marks must be durable in the store so a skipped ``end`` is caught
    up by the next one).
    """

    _done: dict[int, tuple[Event, list[Event]]] = {}

    def begin(self) -> None:
        raise NotImplementedError

    def apply(self, event: Event) -> list[Event]:
        raise NotImplementedError

    def apply_other(self, event: Event) -> list[Event]:
        raise NotImplementedError(f"{self.label} has no other side")

    def end(self, last: Event) -> list[Event]:
        return []

    def _run(self, batch: list[Event], apply: Callable[[Event], list[Event]]) -> list[Event]:
        if len(batch) == 1:  # the runtime replays a failed batch one event at a time
            e = batch[0]
            hit = self._done.pop(id(e), None)
            if hit is not None and hit[0] is e:
                return hit[1]
        self._done = done = {}
        self.begin()
        out: list[Event] = []
        for e in batch:
            r = apply(e)
            done[id(e)] = (e, r)
            out.extend(r)
        out.extend(self.end(batch[-1]))
        self._done = {}
        return out

    def process(self, batch: list[Event]) -> list[Event]:
        return self._run(batch, self.apply)

    def process_one(self, event: Event) -> list[Event]:
        return self._run([event], self.apply)

    def process_other(self, batch: list[Event]) -> list[Event]:
        return self._run(batch, self.apply_other)
