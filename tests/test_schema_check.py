"""Event-schema evolution from the command line: the lint warning of `edm validate` for open
content models on output streams, `edm schema lock` and `edm schema check` against a lock file,
a directory and a git revision (a real git repository in a temporary directory)."""
from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import ok

TOPOLOGY = """kind: microservice
name: shop
streams:
  cart-events: {}
  orders:
    value: {format: json, schema: schemas/order.json}
    compatibility: %s
pipelines:
  checkout:
    from: cart-events
    to: orders
"""

CLOSED = {"type": "object", "additionalProperties": False, "required": ["id", "total"],
          "properties": {"id": {"type": "string"}, "total": {"type": "number"},
                         "status": {"enum": ["new", "paid", "shipped"]}}}


def _project(root: Path, schema: dict, mode: str = "BACKWARD") -> Path:
    (root / "schemas").mkdir(parents=True, exist_ok=True)
    (root / "schemas" / "order.json").write_text(json.dumps(schema, indent=2) + "\n")
    topology = root / "topology.yaml"
    topology.write_text(TOPOLOGY % mode)
    return topology


def _with(**changes: dict) -> dict:
    schema = json.loads(json.dumps(CLOSED))
    schema["properties"].update(changes)
    return schema


def test_validate_warns_about_an_open_model_on_an_output_stream(tmp_path: Path) -> None:
    open_model = {**CLOSED, "additionalProperties": True,
                  "properties": {**CLOSED["properties"], "customer": {"type": "object", "properties": {}}}}
    topology = _project(tmp_path, open_model)
    result = ok("validate", topology)
    assert "1 file(s) valid, 1 warning(s)" in result.stdout
    assert f"{topology}:6:35: warning: stream 'orders' is written with an open content model in " \
           "schemas/order.json at $, $.customer: under BACKWARD" in result.stderr
    assert '"additionalProperties": false' in result.stderr
    report = json.loads(ok("validate", "--format", "json", topology).stdout)
    assert report["valid"] is True and report["errors"] == []
    assert [(w["line"], w["severity"], w["code"]) for w in report["warnings"]] == [(6, "warning", "lint")]

    _project(tmp_path, open_model, "FORWARD")  # adding properties to an open model is FORWARD
    assert "warning" not in ok("validate", topology).stderr
    _project(tmp_path, CLOSED)
    assert "warning" not in ok("validate", topology).stderr
