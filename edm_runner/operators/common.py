"""Schema fragments and helpers shared by the operator modules (registers nothing)."""
from __future__ import annotations

from typing import Any, get_args

from edm_runner.serde.spec import Format

EXPRESSION: dict = {
    "type": "string",
    "minLength": 1,
    "description": "A Jinja2 expression evaluated per event with `key`, `value` and `event` in scope.",
}

STREAM_NAME: dict = {"type": "string", "minLength": 1, "description": "A stream declared under `streams:`."}

PARTITIONER: dict = {
    "description": "How the partition is chosen: `default` (murmur2 of the key bytes, as Kafka's "
                   "Java client; null keys round robin), `round_robin`, or a declared function "
                   "`fn(key, value, num_partitions) -> int`.",
    "oneOf": [
        {"enum": ["default", "round_robin"]},
        {"type": "object", "properties": {"function": {"type": "string", "minLength": 1}},
         "required": ["function"], "additionalProperties": False},
    ],
}

KEY_FORMAT: dict = {
    "enum": list(get_args(Format)),
    "description": "The key format of the internal topic (it decides the partition: the key's bytes are "
                   "hashed). Default: the key format of the stream or table the first join after it "
                   "reads (so they are copartitioned), else json.",
}

VALUE_FORMAT: dict = {"enum": list(get_args(Format)),
                      "description": "The value format of the internal topic (default json)."}


def whole_expression(config: Any) -> list[tuple[tuple, str]]:
    """``expressions()`` for operators whose whole config is one expression string."""
    return [((), config)] if isinstance(config, str) else []


def keyed_expressions(config: Any, *names: str) -> list[tuple[tuple, str]]:
    """``expressions()`` for mapping configs: the expression strings under ``names``."""
    if not isinstance(config, dict):
        return []
    return [((name,), config[name]) for name in names if isinstance(config.get(name), str)]
