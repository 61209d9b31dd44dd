"""map, map_values, select_key, flat_map, flat_map_values: compute new keys and values.

Fast paths compute every new key/value of the batch first and assign afterwards, so a batch
that raises half-way is left untouched for the per-event replay.
"""
from __future__ import annotations

from typing import Any

from edm_runner.errors import EventError
from edm_runner.operators.api import BuildContext, Event, ExprFn, PerEventProcessor, Processor
from edm_runner.operators.common import EXPRESSION, keyed_expressions, whole_expression
from edm_runner.operators.registry import Operator, register
from edm_runner.language.model import StepSpec


class MapValues(PerEventProcessor):
    label = "map_values"

    def __init__(self, fn: ExprFn, step: StepSpec) -> None:
        self.fn = fn
        self.pos = step.pos

    def compute(self, e: Event) -> Any:
        return self.fn(e.key, e.value, e)

    def emit(self, e: Event, value: Any) -> Event:
        e.value = value
        return e


class SelectKey(PerEventProcessor):
    label = "select_key"

    def __init__(self, fn: ExprFn, step: StepSpec) -> None:
        self.fn = fn
        self.pos = step.pos

    def compute(self, e: Event) -> Any:
        return self.fn(e.key, e.value, e)

    def emit(self, e: Event, key: Any) -> Event:
        e.key = key
        return e


class Map(PerEventProcessor):
    """New key and/or value; both expressions see the ORIGINAL key and value."""

    label = "map"

    def __init__(self, key_fn: ExprFn | None, value_fn: ExprFn | None, step: StepSpec) -> None:
        self.key_fn = key_fn
        self.value_fn = value_fn
        self.pos = step.pos

    def compute(self, e: Event) -> tuple[Any, Any]:
        k = self.key_fn(e.key, e.value, e) if self.key_fn else e.key
        v = self.value_fn(e.key, e.value, e) if self.value_fn else e.value
        return k, v

    def emit(self, e: Event, pair: tuple[Any, Any]) -> Event:
        e.key, e.value = pair
        return e


def _as_list(result: Any, what: str) -> list:
    if not isinstance(result, (list, tuple)):
        raise EventError(f"the expression must return a list of {what}, got {type(result).__name__}")
    return list(result)


class FlatMap(Processor):
    """Each [key, value] pair returned becomes an event (same timestamp, headers, origin)."""

    label = "flat_map"

    def __init__(self, fn: ExprFn, step: StepSpec) -> None:
        self.fn = fn
        self.pos = step.pos

    def process_one(self, event: Event) -> list[Event]:
        out = []
        for pair in _as_list(self.fn(event.key, event.value, event), "[key, value] pairs"):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise EventError(f"each item must be a [key, value] pair, got {pair!r}")
            out.append(event.derive(pair[0], pair[1]))
        return out


class FlatMapValues(Processor):
    """Each value returned becomes an event with the original key."""

    label = "flat_map_values"

    def __init__(self, fn: ExprFn, step: StepSpec) -> None:
        self.fn = fn
        self.pos = step.pos

    def process_one(self, event: Event) -> list[Event]:
        key = event.key
        return [event.derive(key, v) for v in _as_list(self.fn(key, event.value, event), "values")]


def _build_map(step: StepSpec, ctx: BuildContext) -> Map:
    cfg = step.config
    key_fn = ctx.compile(cfg["key"], step.pos) if "key" in cfg else None
    value_fn = ctx.compile(cfg["value"], step.pos) if "value" in cfg else None
    return Map(key_fn, value_fn, step)


def _simple(cls: type[Processor]):
    def build(step: StepSpec, ctx: BuildContext) -> Processor:
        return cls(ctx.compile(step.config, step.pos), step)
    return build


register(Operator(
    name="map_values",
    schema=EXPRESSION,
    build=_simple(MapValues),
    description="Replace each event's value by the expression's result.",
    expressions=whole_expression,
))

register(Operator(
    name="select_key",
    schema=EXPRESSION,
    build=_simple(SelectKey),
    description="Replace each event's key by the expression's result (repartition before keyed state).",
    expressions=whole_expression,
))

register(Operator(
    name="map",
    schema={
        "type": "object",
        "properties": {"key": EXPRESSION, "value": EXPRESSION},
        "minProperties": 1,
        "additionalProperties": False,
        "description": "`key` and/or `value` expressions; both see the original key and value.",
    },
    build=_build_map,
    description="Replace each event's key and/or value.",
    expressions=lambda config: keyed_expressions(config, "key", "value"),
))

register(Operator(
    name="flat_map",
    schema={**EXPRESSION, "description": "An expression returning a list of [key, value] pairs."},
    build=_simple(FlatMap),
    description="Turn each event into zero or more events, each from a [key, value] pair.",
    expressions=whole_expression,
))

register(Operator(
    name="flat_map_values",
    schema={**EXPRESSION, "description": "An expression returning a list of values."},
    build=_simple(FlatMapValues),
    description="Turn each event into zero or more events with the same key, one per value.",
    expressions=whole_expression,
))
