"""The checked-in topology JSON Schema is the one the code assembles, and it is a valid
draft 2020-12 schema that accepts the examples and rejects what the validator rejects."""
from __future__ import annotations

from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from edm_runner.operators.registry import operators
from edm_runner.language import topology_schema, write_schema
from edm_runner.language.schema import render_schema

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "schemas" / "topology.schema.json"


def test_checked_in_schema_is_fresh() -> None:
    assert CHECKED_IN.is_file(), "schemas/topology.schema.json is missing: run `edm schema`"
    assert CHECKED_IN.read_text(encoding="utf-8") == render_schema(), \
        "schemas/topology.schema.json is stale: run `edm schema`"


def test_write_schema_writes_what_topology_schema_returns(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    write_schema(out)
    assert out.read_text(encoding="utf-8") == render_schema()


def test_schema_is_draft_2020_12_with_one_alternative_per_operator() -> None:
    schema = topology_schema()
    Draft202012Validator.check_schema(schema)
    choices = schema["$defs"]["steps"]["items"]["oneOf"]
    assert sorted(next(iter(c["required"])) for c in choices) == sorted(operators())
    assert all(c.get("description") for c in choices)


def test_schema_accepts_the_examples_and_rejects_unknown_keys_and_operators() -> None:
    validator = Draft202012Validator(topology_schema())
    examples = sorted(p for p in (ROOT / "topologies").rglob("*.yaml") if not p.name.endswith(".test.yaml"))
    assert examples
    for path in examples:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path}: {errors}"
    base = {"kind": "microservice", "name": "svc", "streams": {"a": {}, "b": {}}}
    assert not validator.is_valid({**base, "tabels": {}})
    assert not validator.is_valid({**base, "pipelines": {"p": {"from": "a", "steps": [{"fliter": "x"}]}}})
    assert validator.is_valid({**base, "pipelines": {"p": {"from": "a", "steps": [{"filter": "x"}], "to": "b"}}})
    assert validator.is_valid({"kind": "business", "name": "b", "services": ["a.yaml"]})
    assert not validator.is_valid({"kind": "business", "name": "b", "services": ["a.yaml"], "streams": {}})
