"""`edm describe FILE`: sub-topologies, tasks, internal topics and copartition groups."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli_helpers import TOPOLOGIES, edm, ok
from tests.test_copartition import REPARTITION_THEN_JOIN

COUNTS = """\
kind: microservice
name: counter
streams:
  events: {partitions: 4}
  users: {partitions: 4, type: entity}
  counts-out: {partitions: 4}
tables:
  users-table: {from: users}
stores:
  counts: {type: key_value}
pipelines:
  count:
    from: events
    steps:
      - join: {table: users-table, kind: left, value: "value"}
      - group_by: {key: key, name: by-key, partitions: 2}
      - count: {store: counts}
    to: counts-out
"""


def test_describe_json(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(COUNTS)
    doc = json.loads(ok("describe", path, "--format", "json").stdout)
    assert [(s["id"], s["source_topics"], s["tasks"]) for s in doc["subtopologies"]] == [
        (0, ["users", "events"], 4), (1, ["counter-by-key-repartition"], 2)]
    assert doc["tasks"] == ["0_0", "0_1", "0_2", "0_3", "1_0", "1_1"]
    assert doc["internal_topics"] == {
        "counter-by-key-repartition": {"partitions": 2, "kind": "repartition", "key": "json", "value": "json",
                                       "partitioner": "default"},
        "counter-counts-changelog": {"partitions": 2, "kind": "changelog", "compacted": True,
                                     "key": "json", "value": "json"}}
    assert [(g["streams"], g["partitions"]) for g in doc["copartition_groups"]] == [
        (["events", "users-table"], [4, 4])]


def test_describe_text(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(COUNTS)
    out = ok("describe", path).stdout
    assert "service counter: 2 sub-topologies, 6 tasks" in out
    assert "sub-topology 1: tasks 1_0, 1_1" in out
    assert "counter-counts-changelog (changelog, 2 partitions, compacted, key json, value json)" in out
    assert "counter-by-key-repartition (repartition, 2 partitions, key json, value json)" in out
    assert ("count.steps[0]: events (events, 4 partitions, key string), "
            "users-table (users, 4 partitions, key string)") in out


def test_describe_shows_the_key_format_an_internal_topic_takes_from_its_join(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(REPARTITION_THEN_JOIN)
    doc = json.loads(ok("describe", path, "--format", "json").stdout)
    # feeding a join with the string-keyed users-table, the repartition topic is string-keyed
    assert doc["internal_topics"]["r-by-user-repartition"] == {
        "partitions": 4, "kind": "repartition", "key": "string", "value": "json", "partitioner": "default"}
    assert doc["copartition_groups"] == [{
        "join": "enrich.steps[2]", "streams": ["by-user", "users-table"], "topics": ["r-by-user-repartition", "users"],
        "partitions": [4, 4], "key_formats": ["string", "string"], "partitioners": ["default", "default"]}]
    out = ok("describe", path).stdout
    assert "r-by-user-repartition (repartition, 4 partitions, key string, value json)" in out


def test_describe_business_topology_describes_each_service() -> None:
    docs = json.loads(ok("describe", TOPOLOGIES / "payroll" / "payroll.yaml", "--format", "json").stdout)
    assert [d["service"] for d in docs] == ["payroll-calculation", "payments", "notifications"]


def test_describe_invalid_file_reports_positions(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(COUNTS.replace("store: counts", "store: cuonts"))
    result = edm("describe", path)
    assert result.code != 0 and "t.yaml:" in result.stderr and "cuonts" in result.stderr
    assert "Traceback" not in result.stderr
