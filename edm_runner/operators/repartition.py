"""repartition: write events to a topic keyed (and partitioned) anew; the pipeline goes on
from that topic, in a new sub-topology.

Either an internal topic ``<service>-<name>-repartition`` with ``partitions`` partitions (its
key format decided by ``spec.partitioning``: ``key_format``, else that of the join it feeds,
else json; values json unless ``value_format``), or ``to:`` a declared stream (its serdes and
partition count).
"""
from __future__ import annotations

from typing import Any

from edm_runner.operators.api import BuildContext, Event, ExprFn, Processor
from edm_runner.operators.common import (EXPRESSION, KEY_FORMAT, PARTITIONER, STREAM_NAME, VALUE_FORMAT,
                                         keyed_expressions)
from edm_runner.operators.registry import Operator, register
from edm_runner.operators.sink import FunctionPartitioner, TopicWriter
from edm_runner.records.partitioner import DefaultPartitioner, RoundRobin
from edm_runner.records import OutRecord
from edm_runner.serde import make_serde
from edm_runner.language.model import StepSpec


class Repartition(Processor):
    """A sink: sets the new key (if any) and emits records to the target topic."""

    label = "repartition"

    def __init__(self, key_fn: ExprFn | None, writer: TopicWriter, outputs: list[OutRecord],
                 step: StepSpec) -> None:
        self.key_fn = key_fn
        self.writer = writer
        self.outputs = outputs
        self.pos = step.pos

    def process(self, batch: list[Event]) -> list[Event]:
        f = self.key_fn
        if f is not None:
            keys = [f(e.key, e.value, e) for e in batch]
            for e, k in zip(batch, keys):
                e.key = k
        self.outputs.extend(self.writer.records(batch))
        return []


def _build(step: StepSpec, ctx: BuildContext) -> Repartition:
    cfg = step.config
    target = ctx.stream(cfg["to"], step.pos) if "to" in cfg else ctx.internal_topic(cfg["name"])
    n = target.partitions
    kind = cfg.get("partitioner", "default")
    if kind == "round_robin":
        partitioner: Any = RoundRobin(n)
    elif isinstance(kind, dict):
        partitioner = FunctionPartitioner(kind["function"], ctx.function(kind["function"], step.pos), n)
    else:
        partitioner = DefaultPartitioner(n)
    writer = TopicWriter(target.topic, n, make_serde(target.key), make_serde(target.value), partitioner,
                         ctx.timestamp_bounds)
    key_fn = ctx.compile(cfg["key"], step.pos) if "key" in cfg else None
    return Repartition(key_fn, writer, ctx.outputs, step)


_COMMON = {"key": {**EXPRESSION, "description": "A new key (default: keep the key)."},
           "partitioner": PARTITIONER}

register(Operator(
    name="repartition",
    schema={
        "oneOf": [
            {"type": "object",
             "properties": {
                 "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$",
                          "description": "Names the internal topic `<service>-<name>-repartition`."},
                 "partitions": {"type": "integer", "minimum": 1},
                 "key_format": KEY_FORMAT, "value_format": VALUE_FORMAT,
                 **_COMMON},
             "required": ["name", "partitions"], "additionalProperties": False},
            {"type": "object",
             "properties": {"to": STREAM_NAME, **_COMMON},
             "required": ["to"], "additionalProperties": False},
        ],
        "description": "{name, partitions, key?, partitioner?, key_format?, value_format?} for an internal topic, or "
                       "{to: <stream>, key?, partitioner?} for a declared stream.",
    },
    build=_build,
    description="Re-key and redistribute events over a topic; the pipeline continues from it.",
    expressions=lambda config: keyed_expressions(config, "key"),
))
