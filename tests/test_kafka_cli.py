"""The `edm` CLI against Kafka, through real subprocesses: run, produce, consume, topics,
an unreachable broker, --no-create-topics, and `edm dev kafka stop`."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from cli_helpers import TOPOLOGIES, edm, ok
from test_kafka_broker import closed_port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def copy_topology(directory: Path, name: str) -> Path:
    path = directory / "topology.yaml"
    path.write_text(f"""\
kind: microservice
name: {name}
streams:
  in: {{topic: {name}-in, partitions: 2, key: string, value: json}}
  out: {{topic: {name}-out, partitions: 2, key: string, value: json}}
pipelines:
  copy: {{from: in, to: out}}
""")
    return path


def test_run_against_an_unreachable_kafka_fails_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("EDM_KAFKA_CONNECT_TIMEOUT_S", "1")
    result = edm("run", copy_topology(tmp_path, "unreachable"), "--broker", f"kafka://{address}",
                 "--until-idle", timeout=30)
    assert result.code == 1, result.stderr
    assert f"cannot reach Kafka at {address} after 1 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_connect_timeout_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDM_KAFKA_CONNECT_TIMEOUT_S", "soon")
    result = edm("run", copy_topology(tmp_path, "timeout"), "--broker", "kafka://127.0.0.1:1",
                 "--until-idle", timeout=30)
    assert result.code == 1
    assert "EDM_KAFKA_CONNECT_TIMEOUT_S='soon' is not a positive number" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("on_kafka", [False, pytest.param(True, marks=pytest.mark.kafka)],
                         ids=["local", "kafka"])
def test_no_create_topics_lists_the_missing_topics_and_creates_none(
        tmp_path: Path, request: pytest.FixtureRequest, on_kafka: bool) -> None:
    name = unique("managed")
    topology = copy_topology(tmp_path, name)
    broker = (f"kafka://{request.getfixturevalue('kafka_bootstrap')}" if on_kafka
              else f"local:{tmp_path / 'broker'}")
    ok("produce", "in", "-t", topology, "--broker", broker, stdin='{"key": "a", "value": 1}\n')

    refused = edm("run", topology, "--broker", broker, "--no-create-topics", "--until-idle")
    assert refused.code == 1, refused.stderr
    [message] = [line for line in refused.stderr.splitlines() if line.startswith("edm: ")]
    assert f"{name}-out" in message and "create them" in message
    assert f"{name}-in" not in message  # only the missing one is listed
    assert "Traceback" not in refused.stderr
    listed = ok("topics", "--broker", broker).stdout
    assert f"{name}-in" in listed and f"{name}-out" not in listed

    ok("run", topology, "--broker", broker, "--until-idle")
    again = ok("run", topology, "--broker", broker, "--no-create-topics", "--until-idle")
    assert f"{name}: 0 in, 0 out" in again.stderr  # every topic exists now; nothing new to do


@pytest.mark.kafka
def test_produce_consume_and_topics_against_kafka(
        tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same flags as on the embedded broker, with --broker or EDM_BROKER; a topology's
    run goes through Kafka, the quickstart's dead letter included."""
    suffix = uuid.uuid4().hex[:8]
    quickstart = yaml.safe_load((TOPOLOGIES / "quickstart" / "topology.yaml").read_text())
    quickstart["name"] += f"-{suffix}"  # its own consumer group and topics on a shared broker
    for name, stream in quickstart["streams"].items():
        stream["topic"] = f"{name}-{suffix}"
    quickstart["streams"]["orders"]["value"]["schema"] = str(TOPOLOGIES.parent / "schemas" / "order.json")
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump(quickstart, sort_keys=False))
    broker = f"kafka://{kafka_bootstrap}"

    ok("produce", "orders", "-t", topology, "--broker", broker,
       "-f", TOPOLOGIES / "quickstart" / "orders.jsonl")
    monkeypatch.setenv("EDM_BROKER", broker)  # the same broker, from the environment
    run = ok("run", topology, "--until-idle")
    assert "6 in, 3 out, 0 skipped, 1 dead-lettered" in run.stderr

    large = ok("consume", "large-orders", "-t", topology, "--from-beginning").lines()
    assert sorted(line["key"] for line in large) == ["o-2", "o-3", "o-5"]
    assert {line["value"]["customer"] for line in large} == {"BOB", "CAROL", "ERIN"}
    [dead] = ok("consume", "orders-dlq", "-t", topology, "--from-beginning").lines()
    assert dead["key"] == "o-4" and json.loads(dead["value"])["total"] == "not a number"
    assert dead["headers"]  # says why

    raw_topic = f"raw-{suffix}"
    ok("produce", raw_topic, "--partitions", "2", "--raw-values", stdin='"x"\n"y"\n"z"\n')
    first = ok("consume", raw_topic, "--from-beginning", "--max", "2").lines()
    assert len(first) == 2
    every = ok("consume", raw_topic, "--from-beginning").lines()
    assert sorted(line["value"] for line in every) == ["x", "y", "z"]

    rows = {line.split()[0]: line.split()[1:] for line in ok("topics").stdout.splitlines()[1:]}
    assert rows[raw_topic] == ["2", "3"]
    assert rows[f"orders-{suffix}"] == ["3", "6"]
    assert rows[f"orders-dlq-{suffix}"] == ["1", "1"]


def test_dev_kafka_stop_without_a_broker_says_not_running(tmp_path: Path) -> None:
    result = edm("dev", "kafka", "stop", "--dir", tmp_path / "nothing")
    assert result.code == 0
    assert "kafka not running" in result.stderr


@pytest.mark.kafka
def test_a_first_run_on_fresh_topics_logs_no_error(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The metadata names a new partition's leader a moment before that broker serves it: the
    first produce and a service's first run (its new repartition and changelog topics) logged
    aiokafka's NotLeaderForPartitionError at ERROR before retrying. Creating topics now waits
    until their leaders serve them."""
    name = unique("fresh")
    topology = tmp_path / "topology.yaml"
    topology.write_text(f"""\
kind: microservice
name: {name}
streams:
  in: {{topic: {name}-in, partitions: 4, key: string, value: json}}
  out: {{topic: {name}-out, partitions: 4, key: string, value: json}}
stores:
  c: {{type: key_value}}
pipelines:
  p:
    from: in
    steps: [{{group_by: {{key: value.g, name: g}}}}, {{count: {{store: c}}}}]
    to: out
""")
    broker = f"kafka://{kafka_bootstrap}"
    lines = "".join(json.dumps({"key": f"k{i}", "value": {"g": f"g{i % 7}"}}) + "\n" for i in range(50))
    produced = ok("produce", "in", "-t", topology, "--broker", broker, stdin=lines)
    run = ok("run", topology, "--until-idle", "--broker", broker)
    assert "50 in, 50 out" in run.stderr
    for output in (produced.stderr, run.stderr):
        assert not [line for line in output.splitlines() if " ERROR " in line or "etrying" in line], output
