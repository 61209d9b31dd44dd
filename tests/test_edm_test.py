"""`edm test` (issue 13): every example's test files pass through the real CLI, a failing
expectation exits 1 with a diff at its line, a broken test file exits 2 at file:line:col, the
JUnit XML is well formed, and the test-file JSON Schema is fresh."""
from __future__ import annotations

import asyncio
import heapq
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from cli_helpers import ROOT, TOPOLOGIES, edm
from edm_runner.brokers.local import LocalBroker
from edm_runner.language.model import SerdeSpec
from edm_runner.records.partitioner import default_partition
from edm_runner.serde import make_serde
from edm_runner.testing.driver import TestDriver
from edm_runner.testing.spec import json_schema, render_json_schema
from test_kafka_conformance import EXAMPLES, canonical, inputs_of, run_example, services_of

SCHEMA = ROOT / "schemas" / "test.schema.json"
TESTS = sorted(TOPOLOGIES.rglob("*.test.yaml"))


def test_every_example_ships_tests_and_they_pass(tmp_path: Path) -> None:
    examples = sorted(d for d in TOPOLOGIES.iterdir() if d.is_dir())
    assert [d for d in examples if not list(d.glob("*.test.yaml"))] == []
    report = tmp_path / "junit.xml"
    result = edm("test", TOPOLOGIES, "--junit-xml", report)
    assert result.code == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if line.startswith("PASS ")]
    assert len(passed) >= 2 * len(examples)
    assert not [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    assert (int(root.get("tests")), root.get("failures"), root.get("errors")) == (len(passed), "0", "0")
    assert sorted(s.get("name") for s in root) == sorted(map(str, TESTS))


def test_a_topology_file_runs_the_tests_beside_it() -> None:
    result = edm("test", "topologies/payroll/payroll.yaml")
    assert result.code == 0, result.stdout + result.stderr
    names = re.findall(r"^PASS (\S+)::", result.stdout, re.M)
    assert set(names) == {"topologies/payroll/payroll.test.yaml"} and len(names) == 5


def _quickstart(tmp_path: Path, test: str) -> Path:
    folder = tmp_path / "topologies" / "quickstart"
    shutil.copytree(TOPOLOGIES / "quickstart", folder)
    for old in folder.glob("*.test.yaml"):
        old.unlink()
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")  # the topology's ../../schemas
    (folder / "topology.test.yaml").write_text(test)
    return folder / "topology.test.yaml"


FAILING = """\
cases:
  passes:
    produce:
      orders: [{key: o-1, value: {customer: ann, total: 300}}]
    expect:
      streams:
        large-orders: [{key: o-1, value: {order: o-1, customer: ANN, total: 300}}]
  fails:
    produce:
      orders:
        - {key: o-1, value: {customer: ann, total: 300}}
        - {key: o-2, value: {customer: bob, total: 5}}
    expect:
      streams:
        large-orders:
          - {key: o-1, value: {order: o-1, customer: ann, total: 300}}
      dead_letters:
        orders-dlq: 1
"""


def test_a_failing_expectation_exits_1_with_a_diff_at_its_line(tmp_path: Path) -> None:
    test = _quickstart(tmp_path, FAILING)
    report = tmp_path / "junit.xml"
    result = edm("test", test, "--junit-xml", report)
    assert result.code == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"PASS {test}::passes" in out and f"FAIL {test}::fails" in out
    assert f"{test}:15: stream large-orders: the records differ" in out  # the line of `large-orders:`
    assert '-{"key": "o-1", "value": {"customer": "ann", "order": "o-1", "total": 300}}' in out
    assert '+{"key": "o-1", "value": {"customer": "ANN", "order": "o-1", "total": 300}}' in out
    assert f"{test}:18: dead letters orders-dlq: expected 1 record, got 0 records" in out
    assert "1 passed, 1 failed" in out
    assert "Traceback" not in result.stderr
    root = ET.parse(report).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    failure = root.find(".//testcase[@name='fails']/failure")
    assert failure is not None and failure.get("message").startswith(f"{test}:15:")
    assert "dead letters orders-dlq" in failure.text


def test_a_window_store_expected_as_one_value_says_how_to_write_its_windows(tmp_path: Path) -> None:
    folder = tmp_path / "hourly-revenue"
    shutil.copytree(TOPOLOGIES / "hourly-revenue", folder)
    test = folder / "topology.test.yaml"
    test.write_text("cases:\n  c:\n    produce:\n      customer-orders:\n"
                    "        - {key: o-1, value: {customer: al, amount: 2}, timestamp: 0}\n"
                    "    expect:\n      stores: {hourly: {al: 2}}\n")
    result = edm("test", test)
    assert result.code == 1, result.stdout + result.stderr
    assert ('al: expected 2, got [{"start": 0, "value": 2}] (a key of a window or session store holds its '
            "windows: write al: [{start, value}, ...])") in result.stdout


BROKEN = {
    "unknown key": ("cases:\n  c:\n    produce: {orders: [{key: a, value: 1}]}\n    expect: {stream: {}}\n",
                    ":4:14: unknown key 'stream' in cases.c.expect"),
    "bad expression": ("cases:\n  c:\n    expect:\n      streams:\n        large-orders: {each: 'value.total >'}\n",
                       ":5:44: cases.c.expect.streams.large-orders.each: invalid expression"),
    "undeclared stream": ("cases:\n  c:\n    produce: {ordres: [{value: 1}]}\n    expect: {late: 0}\n",
                          ":3:15: stream 'ordres' is not declared by"),
    "yaml syntax": ("cases:\n  c: [\n", ":3:1: YAML syntax error"),
    "mock of no function": ("mocks: {risk: {returns: 1}}\ncases:\n  c: {expect: {late: 0}}\n",
                            ":1:9: mocks: 'risk' is not a function of the topology"),
}


def test_a_broken_test_file_exits_2_at_file_line_col(tmp_path: Path) -> None:
    for name, (text, where) in BROKEN.items():
        test = _quickstart(tmp_path / name.replace(" ", "-"), text)
        result = edm("test", test)
        assert result.code == 2, (name, result.stdout, result.stderr)
        assert f"{test}{where}" in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_test_file_whose_topology_is_missing_is_broken(tmp_path: Path) -> None:
    test = tmp_path / "orders.test.yaml"
    test.write_text("topology: ordres.yaml\ncases: {c: {expect: {late: 0}}}\n")
    result = edm("test", tmp_path)
    assert result.code == 2 and f"{test}:1:1: no topology file {tmp_path / 'ordres.yaml'}" in result.stderr


def test_edm_validate_checks_test_files_too(tmp_path: Path) -> None:
    every = [p for p in sorted(TOPOLOGIES.glob("*/*.yaml"))]
    result = edm("validate", *every)
    assert result.code == 0, result.stderr
    test = _quickstart(tmp_path, BROKEN["unknown key"][0])
    result = edm("validate", test)
    assert result.code == 1 and f"{test}:4:14: unknown key 'stream' in cases.c.expect" in result.stderr


def test_a_broken_file_is_an_error_in_the_junit_xml(tmp_path: Path) -> None:
    test = _quickstart(tmp_path, BROKEN["unknown key"][0])
    report = tmp_path / "junit.xml"
    assert edm("test", test, "--junit-xml", report).code == 2
    root = ET.parse(report).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "0", "1")
    assert root.find(".//error").get("message").startswith(f"{test}:4:14:")


WALL_CLOCK = """\
kind: microservice
name: clocked
streams:
  a: {key: string, value: json}
  b: {key: string, value: json}
pipelines:
  copy: {from: a, to: b}
"""


def test_the_wall_clock_is_the_cases_own_and_advances_explicitly(tmp_path: Path) -> None:
    """Kafka refuses records more than an hour ahead of its clock (sinks check it): at the
    case's wall clock the record is refused; advanced by 90 minutes it goes through."""
    (tmp_path / "clocked.yaml").write_text(WALL_CLOCK)
    (tmp_path / "clocked.test.yaml").write_text("""\
wall_clock: 2026-01-01T00:00:00Z
cases:
  ahead of the clock:
    produce: {a: [{key: k, value: 1, timestamp: "2026-01-01T02:00:00Z"}]}
    expect: {error: ahead of the clock}
  after the clock moved:
    steps:
      - advance_wall_clock: 90m
      - produce: {a: [{key: k, value: 1, timestamp: "2026-01-01T02:00:00Z"}]}
      - expect: {streams: {b: [{key: k, value: 1, timestamp: 1767232800000}]}}
""")
    result = edm("test", tmp_path / "clocked.yaml")
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS ") == 2


def test_the_test_file_schema_is_fresh_and_accepts_the_examples() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == render_json_schema(), \
        "schemas/test.schema.json is stale: run `edm test --write-schema schemas/test.schema.json`"
    Draft202012Validator.check_schema(json_schema())
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert TESTS
    for path in TESTS:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path}: {errors}"


def _driver_outputs(path: Path, tmp_path: Path) -> dict[str, dict[int, list[tuple]]]:
    """The example's inputs (as the conformance test produces them) through the test driver.
    Files are merged in timestamp order, each file's own order kept: what ``runtime.ordering``
    does for a task reading several topics, and per partition the order as written."""
    services = services_of(path, "t")
    inputs = inputs_of(path, services)
    driver = TestDriver(services, tmp_path, clock_ms=1_800_000_000_000)
    sequences = []
    for stream, items in inputs:
        key_serde = make_serde(SerdeSpec(stream.key.format))
        value_serde = make_serde(SerdeSpec(stream.value.format))
        sequence = []
        for index, item in enumerate(items):
            key = key_serde.encode(item.get("key"))
            partition = default_partition(key, stream.partitions) if key is not None else index % stream.partitions
            sequence.append((item.get("timestamp", 1_700_000_000_000 + index), stream.topic, partition, key,
                             value_serde.encode(item["value"])))
        sequences.append(sequence)
    for timestamp, topic, partition, key, value in heapq.merge(*sequences, key=lambda r: (r[0], r[1], r[2])):
        driver.produce(topic, key, value, timestamp, (), partition)
    assert driver.failed is None, driver.failed
    driver.close()
    topics = sorted({s.topic for service in services for s in service.streams.values()})
    out: dict[str, dict[int, list[tuple]]] = {}
    for topic in topics:
        partitions = {p: [] for p in range(driver.partitions[topic])}
        for tp, records in driver.logs.items():
            if tp.topic == topic:
                partitions[tp.partition] = [(r.key, r.value, r.headers, r.timestamp_ms) for r in records]
        out[topic.removesuffix("-t")] = partitions
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_the_driver_gives_what_edm_run_gives(path: Path, tmp_path: Path) -> None:
    """Every example's sample inputs: the driver's records on every stream, partition by
    partition, are those `edm run` writes on the embedded broker (compared as the Kafka
    conformance test compares the two brokers)."""
    if not list(path.parent.glob("*.jsonl")):
        pytest.skip("no <stream>.jsonl sample inputs (click-ingest's come over HTTP)")
    local = asyncio.run(run_example(LocalBroker(tmp_path / "broker"), path, "t"))
    driven = _driver_outputs(path, tmp_path / "driver")
    assert any(records for partitions in driven.values() for records in partitions.values())
    assert driven.keys() == local.keys()
    for topic, partitions in local.items():
        assert {p: canonical(r) for p, r in driven[topic].items() if r} == \
            {p: canonical(r) for p, r in partitions.items() if r}, topic


def test_a_python_mock_replaces_a_declared_function_and_a_bad_one_is_a_broken_file(tmp_path: Path) -> None:
    folder = tmp_path / "topologies" / "payroll"
    shutil.copytree(TOPOLOGIES / "payroll", folder)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (folder / "fake_rules.py").write_text("def lines(lines, batch):\n"
                                          "    return [{'employee': 'x', 'net_cents': len(lines) * 100}]\n")
    (folder / "payroll.test.yaml").write_text("""\
mocks: {pay_lines: {python: "fake_rules:lines"}}
cases:
  faked:
    produce:
      timesheets:
        - key: a
          value: {department: a, period: 2026-01, approved: true,
                  lines: [{employee: a, hours: 1, rate: 1}, {employee: b, hours: 1, rate: 1}]}
    expect:
      streams: {payments: [{key: x, value: {employee: x, batch: null, amount: 2.0, status: paid}}]}
      calls: {pay_lines: 1}
""")
    result = edm("test", folder)
    assert result.code == 0, result.stdout + result.stderr
    (folder / "payroll.test.yaml").write_text('mocks: {pay_lines: {python: "nothere:f"}}\n'
                                              "cases: {c: {expect: {late: 0}}}\n")
    result = edm("test", folder)
    assert result.code == 2
    assert f"{folder / 'payroll.test.yaml'}:1:9: mocks: 'pay_lines': cannot import module 'nothere'" in result.stderr
