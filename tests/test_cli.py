"""The CLI as a user meets it: exit codes, error output without tracebacks, drawings."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cli_helpers import ROOT, TOPOLOGIES, edm, ok

BAD = """kind: microservice
name: bad
streams:
  a: {partitions: 1}
pipelines:
  p:
    from: a
    steps:
      - fliter: value.x > 1
    to: nowhere
"""


def test_validate_exit_codes_and_positions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = edm("validate", bad)
    assert result.code == 1
    assert f"{bad}:9:9:" in result.stderr and "fliter" in result.stderr and "filter" in result.stderr
    assert f"{bad}:10:9:" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr

    assert ok("validate", TOPOLOGIES / "quickstart" / "topology.yaml").code == 0
    assert edm("validate").code == 2  # usage error: no file
    assert edm("validate", "--format", "yaml", bad).code == 2


def test_validate_json_output_for_ci(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = edm("validate", "--format", "json", bad)
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert {(e["line"], e["col"]) for e in report["errors"]} >= {(9, 9), (10, 9)}
    assert all(e["file"] == str(bad) and e["message"] for e in report["errors"])


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = edm("run", tmp_path / "absent.yaml", "--until-idle")
    assert result.code == 1
    assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr


def test_graph_of_a_business_topology_draws_services_and_shared_streams() -> None:
    mermaid = ok("graph", TOPOLOGIES / "payroll" / "payroll.yaml").stdout
    assert mermaid.startswith("flowchart LR")
    for name in ("payroll-calculation", "payments", "notifications", "payment-batches", "timesheets"):
        assert name in mermaid
    dot = ok("graph", TOPOLOGIES / "payroll" / "payroll.yaml", "--format", "dot").stdout
    assert dot.startswith('digraph "payroll"')
    assert "svc_payments -> t_payments" in dot and "t_payment_batches -> svc_payments" in dot


def test_graph_of_a_microservice_draws_its_steps_and_branches() -> None:
    mermaid = ok("graph", TOPOLOGIES / "branch-merge" / "topology.yaml").stdout
    assert "when value.country == 'BE'" in mermaid and "otherwise" in mermaid
    assert "s_shop_orders -->" in mermaid


def test_schema_command_writes_the_checked_in_schema(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    ok("schema", "-o", out)
    assert json.loads(out.read_text()) == json.loads((ROOT / "schemas" / "topology.schema.json").read_text())


def test_produce_reports_a_malformed_line_with_its_position(tmp_path: Path) -> None:
    result = edm("produce", "events", "--state-dir", tmp_path, stdin='{"value": 1}\n{"value": \n')
    assert result.code == 1
    assert "<stdin>:2:" in result.stderr and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_produce_consume_and_topics_without_a_topology(tmp_path: Path) -> None:
    ok("produce", "events", "--state-dir", tmp_path, "--partitions", "2",
       stdin='{"key": "a", "value": {"n": 1}}\n{"key": "b", "value": {"n": 2}}\n{"value": {"n": 3}}\n')
    lines = ok("consume", "events", "--from-beginning", "--state-dir", tmp_path).lines()
    assert sorted(line["value"]["n"] for line in lines) == [1, 2, 3]
    assert ok("consume", "events", "--from-beginning", "--max", "1", "--state-dir", tmp_path).lines()[0]["value"]
    listing = ok("topics", "--state-dir", tmp_path).stdout
    assert "events" in listing and " 2 " in listing

    missing = edm("consume", "nope", "--from-beginning", "--state-dir", tmp_path)
    assert missing.code == 1 and "'nope' does not exist" in missing.stderr


def test_unknown_stream_with_a_topology_lists_the_declared_ones(tmp_path: Path) -> None:
    result = edm("produce", "ordrs", "-t", TOPOLOGIES / "quickstart" / "topology.yaml",
                 "--state-dir", tmp_path, stdin="")
    assert result.code == 1
    assert "'ordrs' is not declared" in result.stderr and "orders" in result.stderr


def test_broker_url_override_is_checked(tmp_path: Path) -> None:
    result = edm("topics", "--broker", "carrier-pigeon://x", "--state-dir", tmp_path)
    # a malformed option value is a usage error (2), checked before anything runs
    assert result.code == 2 and "kafka://" in result.stderr


GRAPH_EVERYTHING = """\
kind: microservice
name: everything
streams:
  users: {partitions: 2, type: entity, key: string, value: json}
  profiles: {partitions: 1, type: entity, key: string, value: json}
  clicks: {partitions: 2, type: keyed, key: string, value: json}
  views: {partitions: 2, type: keyed, key: string, value: json}
  unused: {partitions: 1, key: string, value: json}
  out: {partitions: 2, key: string, value: json}
tables: {users-table: {from: users}}
global_tables: {profiles-table: {from: profiles}}
stores:
  per-page: {type: key_value}
  scratch: {type: key_value, changelog: false}
pipelines:
  enrich:
    from: clicks
    steps:
      - join: {table: users-table, kind: left, value: "[value, other]"}
      - join: {global_table: profiles-table, key: value.p, value: "[value, other]"}
      - join: {stream: views, name: cv, within: 10s, value: "[value, other]"}
    to: out
  pages:
    from: views
    steps:
      - group_by: {key: value.page, name: by-page}
      - count: {store: per-page}
    to: out
"""


def test_graph_draws_every_stream_table_store_and_internal_topic(tmp_path: Path) -> None:
    """The picture is the topology: nothing `edm describe` lists is missing from `edm graph`."""
    from edm_runner.graph.dag import describe
    from edm_runner.language import load_file
    (tmp_path / "everything.yaml").write_text(GRAPH_EVERYTHING)
    files = [tmp_path / "everything.yaml", *sorted(TOPOLOGIES.glob("*/topology.yaml"))]
    for file in files:
        topology = load_file(file)
        wanted = [*(s.topic for s in topology.streams.values()), *topology.tables,
                  *topology.global_tables, *topology.stores, *describe(topology)["internal_topics"]]
        wanted += [s for sub in describe(topology)["subtopologies"] for s in sub["stores"]]
        for fmt in ("mermaid", "dot"):
            drawing = ok("graph", file, "--format", fmt).stdout
            labels = set(re.findall(r'"([^"]*)"', drawing))
            for name in wanted:
                assert any(re.search(rf"(^|\s){re.escape(name)}($|\s|\))", label) for label in labels), \
                    (file.name, fmt, name, drawing)
    mermaid = ok("graph", files[0]).stdout
    assert 'tb_users_table -.->|"lookup"|' in mermaid and 'gt_profiles_table -.->|"lookup"|' in mermaid
    assert '-->|"other side views"|' in mermaid
    assert 'st_per_page -.->|"changelog"| t_everything_per_page_changelog' in mermaid
    assert "everything-scratch-changelog" not in mermaid  # changelog: false
    assert "s_users --> tb_users_table" in mermaid and "s_profiles --> gt_profiles_table" in mermaid
    assert "class " in mermaid and "t_everything_by_page_repartition" in mermaid.split("class ")[1]


def test_run_reports_the_error_of_every_failed_service(tmp_path: Path) -> None:
    """Both services of a business topology refuse their input topic (it exists with another
    partition count than declared): both errors reach stderr, each with its service, as user
    errors (exit 1, no traceback), not only the first one met."""
    for name in ("halver", "thirder"):
        (tmp_path / f"{name}.yaml").write_text(f"""\
kind: microservice
name: {name}
streams:
  {name}-in: {{partitions: 2, value: json}}
  {name}-out: {{value: json}}
pipelines:
  divide:
    from: {name}-in
    steps:
      - map_values: "value / 2"
    to: {name}-out
""")
        ok("produce", f"{name}-in", "--state-dir", tmp_path / "state", "--raw-values", stdin="6\n")  # 1 partition
    (tmp_path / "shop.yaml").write_text("kind: business\nname: shop\nservices: [halver.yaml, thirder.yaml]\n"
                                        "external_streams: [halver-in, thirder-in]\n")
    result = edm("run", tmp_path / "shop.yaml", "--until-idle", "--state-dir", tmp_path / "state")
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    broker = tmp_path / "state" / "broker"
    for name in ("halver", "thirder"):
        assert (f"edm: service '{name}' failed: partition counts differ on local broker at {broker}: "
                f"'{name}-in' has 1 partition(s) on the broker but the topology declares 2") in result.stderr
        assert f"give stream '{name}-in' a topic of its own (`topic: {name}-{name}-in`" in result.stderr


def test_an_internal_error_among_a_runs_errors_still_asks_to_be_reported(capsys, monkeypatch) -> None:
    """Every error of a run is rendered as it reads alone, after its service's name: a user
    error as its message, an edm bug as an internal error to report; exit 1, no traceback."""
    import pytest
    import typer

    from edm_runner.cli.common import guarded
    from edm_runner.errors import BrokerError, InternalError, ServicesFailed

    monkeypatch.delenv("EDM_DEBUG", raising=False)

    def body() -> int:
        raise ServicesFailed([("a", BrokerError("the broker went away")), ("b", InternalError("step x: KeyError"))])

    with pytest.raises(typer.Exit) as info:
        guarded(body)
    assert info.value.exit_code == 1
    assert capsys.readouterr().err.splitlines() == [
        "edm: service 'a' failed: the broker went away",
        "edm: service 'b' failed: internal error: step x: KeyError (set EDM_DEBUG=1 for a traceback, "
        "and please report it)"]


def test_a_full_embedded_broker_among_a_runs_errors_keeps_its_way_out(tmp_path: Path) -> None:
    """The commands that free room complete a full broker's error also when it is one of
    several errors of a run."""
    import asyncio

    import pytest

    from edm_runner.brokers.base import BrokerFullError
    from edm_runner.brokers.local import LocalBroker
    from edm_runner.cli.common import connected
    from edm_runner.errors import BrokerError, ServicesFailed
    from edm_runner.invocation import Invocation

    async def run() -> None:
        async with connected(LocalBroker(tmp_path / "broker"), Invocation("shop.yaml")):
            raise ServicesFailed([("a", BrokerFullError("the local broker at b", 1 << 20)),
                                  ("b", BrokerError("b refused"))])

    with pytest.raises(ServicesFailed) as info:
        asyncio.run(run())
    assert info.value.services == ["a", "b"]
    first, second = info.value.exceptions
    assert "delete topics you no longer need (`edm topics -t shop.yaml` lists them" in str(first)
    assert str(second) == "b refused"


def test_aiokafka_info_lines_show_only_at_debug_and_its_errors_always() -> None:
    """What `edm run --log-level L` shows of aiokafka: its INFO chatter (joins, syncs, a
    coordinator being elected, logged at ERROR by aiokafka) only at debug; its real errors always."""
    script = (
        "import logging, sys\n"
        "from edm_runner.cli.common import setup_logging\n"
        "class GroupCoordinatorNotAvailableError(Exception): pass\n"
        "setup_logging(sys.argv[1])\n"
        "log = logging.getLogger('aiokafka.consumer.group_coordinator')\n"
        "log.info('Joined group %s', 'g')\n"
        "log.error('Group Coordinator Request failed: %s', GroupCoordinatorNotAvailableError())\n"
        "log.error('Unexpected error in coordinator routine')\n"
        "logging.getLogger('edm.runtime').info('assigned 3 partition(s)')\n")
    shown = {}
    for level in ("info", "debug"):
        result = subprocess.run([sys.executable, "-c", script, level], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        shown[level] = result.stderr
    assert "assigned 3 partition(s)" in shown["info"] and "Unexpected error" in shown["info"]
    assert "Joined group" not in shown["info"] and "GroupCoordinatorNotAvailable" not in shown["info"]
    assert "Joined group" in shown["debug"] and "INFO  aiokafka.consumer.group_coordinator: Group Coordinator" \
        in shown["debug"]
