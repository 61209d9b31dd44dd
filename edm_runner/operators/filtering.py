"""filter and filter_not: keep the events for which an expression is (not) truthy."""
from __future__ import annotations

from typing import Any

from edm_runner.operators.api import BuildContext, Event, ExprFn, PerEventProcessor
from edm_runner.operators.common import EXPRESSION, whole_expression
from edm_runner.operators.registry import Operator, register
from edm_runner.language.model import StepSpec


class Filter(PerEventProcessor):
    """Keeps events where ``predicate`` is truthy (``keep=True``) or falsy (``keep=False``)."""

    def __init__(self, predicate: ExprFn, keep: bool, label: str, step: StepSpec) -> None:
        self.predicate = predicate
        self.keep = keep
        self.label = label
        self.pos = step.pos

    def compute(self, e: Event) -> Any:
        return self.predicate(e.key, e.value, e)  # the truth is taken in emit: the result may be awaited first

    def emit(self, e: Event, passed: Any) -> Event | None:
        return e if bool(passed) == self.keep else None


def _build(keep: bool, label: str):
    def build(step: StepSpec, ctx: BuildContext) -> Filter:
        return Filter(ctx.compile(step.config, step.pos), keep, label, step)
    return build


register(Operator(
    name="filter",
    schema=EXPRESSION,
    build=_build(True, "filter"),
    description="Keep the events for which the expression is truthy.",
    expressions=whole_expression,
))

register(Operator(
    name="filter_not",
    schema=EXPRESSION,
    build=_build(False, "filter_not"),
    description="Drop the events for which the expression is truthy.",
    expressions=whole_expression,
))
