"""What every aggregation step shares, keyed (``operators.aggregate``) or windowed
(``operators.window``): its functions and the refusal of a null group key. Registers nothing.

Both aggregation modules import this one and ``operators.aggregate`` builds the windowed form
through ``operators.window``, so the modules import each other one way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edm_runner.errors import EventError
from edm_runner.language.model import StepSpec
from edm_runner.operators.api import BuildContext, Event


def null_group_key() -> EventError:
    return EventError("the group key is null; an aggregation needs a key: filter such events out "
                      "first or compute a non-null key")


@dataclass(frozen=True)
class AggregateFns:
    """An aggregation as functions of (key, value, aggregate, event).

    ``first(key, value, event)``: the aggregate of one value (count: 1, reduce: the value,
    aggregate: aggregator(initializer)). ``add``: fold one more value in. ``sub`` (grouped
    tables): take an old value out. ``merge(key, aggregate, other, event)``: combine two
    sessions' aggregates.
    """

    op: str
    first: Callable[[Any, Any, Event], Any]
    add: Callable[[Any, Any, Any, Event], Any]
    sub: Callable[[Any, Any, Any, Event], Any] | None
    merge: Callable[[Any, Any, Any, Event], Any] | None


def _compile(ctx: BuildContext, src: str, params: tuple[str, ...]) -> Callable:
    return ctx.compile(src, params=(*params, "event"))


KVA = ("key", "value", "aggregate")


def aggregate_fns(step: StepSpec, ctx: BuildContext) -> AggregateFns:
    """The functions of the count, reduce or aggregate ``step``."""
    cfg = step.config
    if step.op == "count":
        return AggregateFns("count", lambda k, v, e: 1, lambda k, v, a, e: a + 1,
                            lambda k, v, a, e: a - 1, lambda k, a, o, e: a + o)
    if step.op == "reduce":
        adder = _compile(ctx, cfg.get("reducer") or cfg["adder"], KVA)
        sub = _compile(ctx, cfg["subtractor"], KVA) if "subtractor" in cfg else None
        return AggregateFns("reduce", lambda k, v, e: v, adder, sub, lambda k, a, o, e: adder(k, o, a, e))
    init = _compile(ctx, cfg["initializer"], ("key", "value"))
    adder = _compile(ctx, cfg.get("aggregator") or cfg["adder"], KVA)
    sub = _compile(ctx, cfg["subtractor"], KVA) if "subtractor" in cfg else None
    merge = _compile(ctx, cfg["merger"], ("key", "aggregate", "other")) if "merger" in cfg else None
    return AggregateFns("aggregate", lambda k, v, e: adder(k, v, init(k, v, e), e), adder, sub, merge)
