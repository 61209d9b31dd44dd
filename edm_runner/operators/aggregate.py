"""group_by, group_by_key, count, reduce, aggregate.

- ``group_by`` re-keys through ``<service>-<name>-repartition``; the DAG and the runtime
  implement it (``graph.dag``, ``operators.sink.GroupBySink``); on a table its events
  arrive here as changes (``value`` new, ``old`` previous) under the group key.
- ``group_by_key`` marks the current key as the group key (a pass-through step).
- Aggregations keep one value per group key in a key_value store and emit each update
  (key = group key, value = new aggregate). After a ``window`` step they are windowed
  (``operators.window``). Events with a null group key fail the step (the pipeline's
  ``on_error`` applies); on a stream, events with a null value are ignored (as in Kafka
  Streams). On a grouped table: old values are subtracted, new ones added; an aggregate the
  subtractor turns into null is deleted (the update carries a null value).
"""
from __future__ import annotations

from typing import Any

from edm_runner.errors import EventError
from edm_runner.operators.aggregation import AggregateFns, aggregate_fns, null_group_key
from edm_runner.operators.api import BuildContext, Event, EventwiseProcessor, PassThrough, Processor
from edm_runner.operators.common import EXPRESSION, KEY_FORMAT, keyed_expressions
from edm_runner.operators.registry import Operator, register
from edm_runner.operators.table import reads_table, steps_before
from edm_runner.operators.window import build_windowed
from edm_runner.language.model import StepSpec

NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}
STORE_NAME = {"type": "string", "minLength": 1, "description": "A store declared under `stores:`."}


# -- group_by / group_by_key -------------------------------------------------------------------

def _build_group_by(step: StepSpec, ctx: BuildContext) -> Processor:
    raise NotImplementedError("group_by is built by the runtime as a sink to its repartition topic "
                              "(operators.sink.GroupBySink), like the DAG cuts the pipeline there")


# -- aggregations -----------------------------------------------------------------------------

class KeyValueAggregate(EventwiseProcessor):
    """count/reduce/aggregate over a key_value store: one aggregate per group key."""

    def __init__(self, fns: AggregateFns, store: Any, table: bool, step: StepSpec) -> None:
        self.fns = fns
        self.ref = store
        self.table = table
        self.label = step.op
        self.pos = step.pos

    def begin(self) -> None:
        self.store = self.ref.get()

    def apply(self, e: Event) -> list[Event]:
        key = e.key
        if key is None:
            raise null_group_key()
        store, fns = self.store, self.fns
        agg = store.get(key)
        if not self.table:
            if e.value is None:
                return []
            new = fns.add(key, e.value, agg, e) if agg is not None else fns.first(key, e.value, e)
        else:
            old_v, new_v = e.old, e.value
            if old_v is not None and agg is not None:
                if fns.sub is None:
                    raise EventError(f"{fns.op} on a table needs a `subtractor`")
                agg = fns.sub(key, old_v, agg, e)
            if new_v is not None:
                new = fns.add(key, new_v, agg, e) if agg is not None else fns.first(key, new_v, e)
            else:
                new = agg
        store.put(key, new)
        return [e.derive(key, new)]


def window_before(ctx: BuildContext, step: StepSpec) -> StepSpec | None:
    """The ``window`` step right before the aggregation ``step``, if any."""
    before = steps_before(ctx, step)
    return before[-1] if before and before[-1].op == "window" else None


def _build_aggregation(step: StepSpec, ctx: BuildContext) -> Processor:
    window = window_before(ctx, step)
    fns = aggregate_fns(step, ctx)
    if window is not None:
        return build_windowed(step, window, fns, ctx)
    store = ctx.store(step.config["store"], "key_value", {"aggregation": step.op}, step.pos)
    return KeyValueAggregate(fns, store, reads_table(ctx), step)


def _store_of(config: Any) -> list[tuple[str, str | None]]:
    return [(config["store"], None)] if isinstance(config, dict) and isinstance(config.get("store"), str) else []


def _agg_schema(props: dict, alternatives: list[list[str]], description: str) -> dict:
    """An aggregation config: ``store`` plus one of ``alternatives`` (sets of required keys)."""
    schema: dict = {"type": "object", "properties": {"store": STORE_NAME, **props},
                    "required": ["store"], "additionalProperties": False, "description": description}
    if len(alternatives) == 1:
        schema["required"] += alternatives[0]
    else:
        schema["oneOf"] = [{"required": req} for req in alternatives]
    return schema


register(Operator(
    name="group_by",
    schema={"type": "object",
            "properties": {
                "key": {**EXPRESSION, "description": "The group key (params key, value, event)."},
                "name": {**NAME_SCHEMA, "description": "Names the internal topic `<service>-<name>-repartition`."},
                "partitions": {"type": "integer", "minimum": 1,
                               "description": "Default: the pipeline's source partition count."},
                "key_format": KEY_FORMAT},
            "required": ["key", "name"], "additionalProperties": False,
            "description": "{key, name, partitions?, key_format?}: re-key and repartition for an aggregation."},
    build=_build_group_by,
    description="Group events by a new key (through an internal repartition topic) for an aggregation.",
    expressions=lambda config: keyed_expressions(config, "key"),
))

register(Operator(
    name="group_by_key",
    schema={"type": "object", "properties": {}, "additionalProperties": False,
            "description": "`{}`: group by the current key."},
    build=lambda step, ctx: PassThrough("group_by_key", step.pos),
    description="Group events by their current key for an aggregation.",
))

register(Operator(
    name="count",
    schema=_agg_schema({}, [[]], "{store}: count events per group key (per window after `window`)."),
    build=_build_aggregation,
    description="Count events per group key; emits each new count.",
    stores=_store_of,
))

_EXPR_KVA = "params key, value, aggregate"

register(Operator(
    name="reduce",
    schema=_agg_schema(
        {"reducer": {**EXPRESSION, "description": f"Combine a value into the aggregate ({_EXPR_KVA}); "
                                                  "the first value is the initial aggregate."},
         "adder": {**EXPRESSION, "description": f"On a grouped table: add a new value ({_EXPR_KVA})."},
         "subtractor": {**EXPRESSION, "description": f"On a grouped table: take an old value out ({_EXPR_KVA})."}},
        [["reducer"], ["adder", "subtractor"]],
        "{store, reducer}, or {store, adder, subtractor} on a grouped table."),
    build=_build_aggregation,
    description="Combine the values of each group key; emits each new aggregate.",
    expressions=lambda config: keyed_expressions(config, "reducer", "adder", "subtractor"),
    stores=_store_of,
))

register(Operator(
    name="aggregate",
    schema=_agg_schema(
        {"initializer": {**EXPRESSION, "description": "The initial aggregate (params key, value)."},
         "aggregator": {**EXPRESSION, "description": f"The new aggregate ({_EXPR_KVA})."},
         "adder": {**EXPRESSION, "description": f"On a grouped table: add a new value ({_EXPR_KVA})."},
         "subtractor": {**EXPRESSION, "description": f"On a grouped table: take an old value out ({_EXPR_KVA})."},
         "merger": {**EXPRESSION, "description": "Session windows: combine two sessions' aggregates "
                                                 "(params key, aggregate, other)."}},
        [["initializer", "aggregator"], ["initializer", "adder", "subtractor"]],
        "{store, initializer, aggregator, merger?}, or {store, initializer, adder, subtractor} on a "
        "grouped table."),
    build=_build_aggregation,
    description="Fold the values of each group key into an aggregate; emits each new aggregate.",
    expressions=lambda config: keyed_expressions(config, "initializer", "aggregator", "adder",
                                                 "subtractor", "merger"),
    stores=_store_of,
))
