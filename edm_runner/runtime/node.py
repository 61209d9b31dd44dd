"""Runtime processor nodes and the context operators build them with.

A processor works on BATCHES. ``process(batch)`` is the fast path: it must either return the
full result or raise before any visible side effect (compute new values first, then assign),
because when it raises the runtime replays the batch through ``process_one`` event by event
so that the error policy applies to exactly the failing event.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edm_runner.brokers.base import OutRecord
from edm_runner.errors import EdmError
from edm_runner.runtime.event import Event
from edm_runner.spec.model import NOWHERE, Pos, StreamSpec, Topology

ExprFn = Callable[[Any, Any, Event], Any]


class Processor:
    """One step of a pipeline. ``label`` names it in errors (``filter``, ``branch[1].when``)."""

    label: str = "step"
    pos: Pos = NOWHERE

    def process(self, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in batch:
            out.extend(self.process_one(event))
        return out

    def process_one(self, event: Event) -> list[Event]:
        raise NotImplementedError


@dataclass
class BuildContext:
    """What an operator's ``build(step, ctx)`` may use. ``outputs`` collects the records the
    sinks of one batch produce; the runtime sends them after the batch."""

    topology: Topology
    pipeline: str
    functions: dict[str, Callable[..., Any]]
    outputs: list[OutRecord] = field(default_factory=list)

    def compile(self, source: str, pos: Pos = NOWHERE) -> ExprFn:
        from edm_runner.spec.expressions import compile_expression

        return compile_expression(source, params=("key", "value", "event"), functions=self.functions)

    def function(self, name: str, pos: Pos = NOWHERE) -> Callable[..., Any]:
        try:
            return self.functions[name]
        except KeyError:
            declared = ", ".join(sorted(self.functions)) or "none"
            raise EdmError(f"{pos}: function {name!r} is not declared under `functions:` "
                           f"(declared: {declared}); declare it as `{name}: {{python: module:function}}`"
                           ) from None

    def stream(self, name: str, pos: Pos = NOWHERE) -> StreamSpec:
        try:
            return self.topology.streams[name]
        except KeyError:
            declared = ", ".join(sorted(self.topology.streams)) or "none"
            raise EdmError(f"{pos}: stream {name!r} is not declared under `streams:` "
                           f"(declared: {declared})") from None

    def internal_topic(self, name: str) -> str:
        return repartition_topic(self.topology.name, name)

    @property
    def base_dir(self) -> Path:
        return self.topology.base_dir


def repartition_topic(service: str, name: str) -> str:
    """The stable name of an internal repartition topic."""
    return f"{service}-{name}-repartition"
