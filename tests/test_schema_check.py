"""Event-schema evolution from the command line: the lint warning of `edm validate` for open
content models on output streams, `edm schema lock` and `edm schema check` against a lock file,
a directory and a git revision (a real git repository in a temporary directory)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cli_helpers import ROOT, edm, ok

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


def _narrowed() -> dict:
    """CLOSED with total narrowed to integer and the enum value 'shipped' removed: two breaks."""
    return _with(total={"type": "integer"}, status={"enum": ["new", "paid"]})


def test_lock_then_check_against_the_lock_file(tmp_path: Path) -> None:
    topology = _project(tmp_path, CLOSED)
    missing = edm("schema", "check", "topology.yaml", cwd=tmp_path)
    assert missing.code == 2 and "edm schema lock topology.yaml" in missing.stderr
    assert "new: shop/orders-value v1" in ok("schema", "lock", "topology.yaml", cwd=tmp_path).stdout
    lock = json.loads((tmp_path / "topology.schemas.lock.json").read_text())
    assert lock["subjects"]["shop/orders-value"]["versions"] == [{"version": 1, "schema": CLOSED}]
    assert "1 schema(s) compared with" in ok("schema", "check", "topology.yaml", cwd=tmp_path).stdout

    # a compatible change (an optional property added to the closed model) checks and locks as v2
    _project(tmp_path, _with(note={"type": "string"}))
    ok("schema", "check", "topology.yaml", cwd=tmp_path)
    assert "shop/orders-value v2" in ok("schema", "lock", "topology.yaml", cwd=tmp_path).stdout

    _project(tmp_path, {**_narrowed(), "properties": {**_narrowed()["properties"], "note": {"type": "string"}}})
    result = edm("schema", "check", "topology.yaml", cwd=tmp_path)
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("schemas/order.json:13: orders: $.total: the new schema narrows number to integer")
    assert lines[1].startswith("schemas/order.json:16: orders: $.status: the new schema no longer allows "
                               "\"shipped\" (in version 2's enum); BACKWARD requires consumers using the new "
                               "schema to read the events already written with version 2, which may hold "
                               "\"shipped\"; to fix: keep the value in the enum")
    assert lines[2] == "2 breaking change(s) against topology.schemas.lock.json"
    report = json.loads(edm("schema", "check", "topology.yaml", "--format", "json", cwd=tmp_path).stdout)
    assert report["compatible"] is False and [c["path"] for c in report["breaking_changes"]] == ["$.total", "$.status"]

    refused = edm("schema", "lock", "topology.yaml", cwd=tmp_path)
    assert refused.code == 1 and "--force" in refused.stderr
    assert len(json.loads((tmp_path / "topology.schemas.lock.json").read_text())
               ["subjects"]["shop/orders-value"]["versions"]) == 2
    _project(tmp_path, _with(note={"type": "string"}), "NONE")  # NONE: anything goes
    ok("schema", "check", "topology.yaml", cwd=tmp_path)
    assert topology.is_file()


def test_transitive_modes_check_every_locked_version(tmp_path: Path) -> None:
    _project(tmp_path, _with(tier={"type": "string"}))
    ok("schema", "lock", "topology.yaml", cwd=tmp_path)                     # v1: tier is a string
    _project(tmp_path, _with(tier={"type": "integer"}), "NONE")
    ok("schema", "lock", "topology.yaml", cwd=tmp_path)                     # v2: an integer, recorded under NONE
    _project(tmp_path, _with(tier={"type": "integer"}, note={"type": "string"}))
    ok("schema", "check", "topology.yaml", cwd=tmp_path)                    # v3 reads v2's events
    _project(tmp_path, _with(tier={"type": "integer"}, note={"type": "string"}), "BACKWARD_TRANSITIVE")
    result = edm("schema", "check", "topology.yaml", cwd=tmp_path)
    assert result.code == 1                                                 # but not v1's
    assert "orders: $.tier: the new schema allows type integer, not string as version 1 does" in result.stderr
    assert "version 2" not in result.stderr


def test_check_against_a_directory_and_a_git_revision(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _project(repo / "shop", CLOSED)
    git = ["git", "-C", str(repo), "-c", "user.name=edm", "-c", "user.email=edm@example.com"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "v1"], check=True)
    previous = tmp_path / "previous"
    _project(previous / "shop", CLOSED)

    _project(repo / "shop", _narrowed())
    for against in ("git:HEAD", str(previous)):
        result = edm("schema", "check", "shop/topology.yaml", "--against", against, cwd=repo)
        assert result.code == 1, result.stderr
        assert "shop/schemas/order.json:13: orders: $.total: the new schema narrows number to integer" in result.stderr
        assert "shop/schemas/order.json:16: orders: $.status:" in result.stderr
    assert "the schema at HEAD" in edm("schema", "check", "shop/topology.yaml", "--against", "git:HEAD",
                                       cwd=repo).stderr

    _project(repo / "shop", _with(note={"type": "string"}))   # compatible with the committed version
    assert "no breaking change" in ok("schema", "check", "shop/topology.yaml", "--against", "git:HEAD",
                                      cwd=repo).stdout
    ok("schema", "check", "shop/topology.yaml", "--against", str(previous), cwd=repo)
    unknown = edm("schema", "check", "shop/topology.yaml", "--against", "git:no-such-branch", cwd=repo)
    assert unknown.code == 2 and "no such revision" in unknown.stderr


def test_a_broken_input_exits_2_and_edm_schema_still_writes_the_topology_schema(tmp_path: Path) -> None:
    topology = _project(tmp_path, CLOSED)
    topology.write_text(topology.read_text().replace("to: orders", "to: nowhere"))
    result = edm("schema", "check", topology)
    assert result.code == 2 and "undefined stream 'nowhere'" in result.stderr
    (tmp_path / "bad.schemas.lock.json").write_text("{}")
    _project(tmp_path, CLOSED)
    assert edm("schema", "check", topology, "--against", tmp_path / "bad.schemas.lock.json").code == 2
    out = tmp_path / "topology.schema.json"
    assert f"wrote {out}" in ok("schema", "-o", out).stdout
    assert json.loads(out.read_text())["title"] == "edm topology"


def test_a_business_topology_is_checked_service_by_service(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "topologies" / "payroll", tmp_path / "topologies" / "payroll")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    business = Path("topologies/payroll/payroll.yaml")
    assert "payroll-calculation/timesheets-value v1" in ok("schema", "lock", business, cwd=tmp_path).stdout
    assert (tmp_path / "topologies" / "payroll" / "payroll.schemas.lock.json").is_file()
    timesheet = tmp_path / "schemas" / "timesheet.json"
    timesheet.write_text(timesheet.read_text().replace('"hours": {"type": "number"', '"hours": {"type": "integer"'))
    result = edm("schema", "check", business, cwd=tmp_path)
    assert result.code == 1
    assert result.stderr.startswith("schemas/timesheet.json:17: payroll-calculation/timesheets: $.lines[*].hours: "
                                    "the new schema narrows number to integer")
