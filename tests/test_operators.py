"""Operator registrations: config schemas accept the documented shapes and reject others, and
``expressions()`` finds every expression with its path inside the config."""
from __future__ import annotations

import jsonschema
import pytest

from edm_runner.operators.registry import operators

STATELESS = ["filter", "filter_not", "map_values", "select_key", "peek", "map", "flat_map",
             "flat_map_values", "log", "merge", "repartition"]


def _valid(op: str, config: object) -> bool:
    return jsonschema.Draft202012Validator(operators()[op].schema).is_valid(config)


def test_every_stateless_operator_is_registered_with_a_valid_schema() -> None:
    ops = operators()
    for name in STATELESS:
        jsonschema.Draft202012Validator.check_schema(ops[name].schema)
        assert ops[name].description


@pytest.mark.parametrize("op,config", [
    ("filter", "value.n > 1"), ("map", {"key": "value.id"}), ("map", {"key": "k", "value": "v"}),
    ("log", True), ("log", {"message": "value", "level": "debug"}), ("log", {}),
    ("merge", "other"), ("merge", ["a", "b"]),
    ("repartition", {"name": "by-user", "partitions": 8}),
    ("repartition", {"name": "x", "partitions": 1, "key": "value.u", "partitioner": "round_robin"}),
    ("repartition", {"to": "s", "partitioner": {"function": "pick"}}),
])
def test_documented_configs_are_accepted(op: str, config: object) -> None:
    assert _valid(op, config)


@pytest.mark.parametrize("op,config", [
    ("filter", ""), ("filter", 3), ("map", {}), ("map", {"keys": "x"}), ("log", False),
    ("log", {"level": "loud"}), ("merge", []), ("merge", ["a", "a"]),
    ("repartition", {"name": "x"}), ("repartition", {"name": "x", "partitions": 0}),
    ("repartition", {"name": "x", "partitions": 2, "to": "s"}),
    ("repartition", {"to": "s", "partitioner": "random"}),
    ("repartition", {"to": "s", "partitioner": {"function": "f", "extra": 1}}),
])
def test_invalid_configs_are_rejected(op: str, config: object) -> None:
    assert not _valid(op, config)


def test_expressions_are_reported_with_their_paths() -> None:
    ops = operators()
    assert ops["filter"].expressions("value.ok") == [((), "value.ok")]
    assert ops["map"].expressions({"key": "k", "value": "v"}) == [(("key",), "k"), (("value",), "v")]
    assert ops["log"].expressions({"message": "m"}) == [(("message",), "m")]
    assert ops["log"].expressions(True) == []
    assert ops["repartition"].expressions({"name": "x", "partitions": 2, "key": "value.u"}) == \
        [(("key",), "value.u")]
    assert ops["merge"].expressions(["a"]) == []
