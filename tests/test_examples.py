"""Every example topology validates and runs on the embedded broker through the real CLI,
with the outputs its domain implies."""
from __future__ import annotations

import json
import re
import shlex
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from cli_helpers import TOPOLOGIES, edm, ok
from edm_runner.records.partitioner import default_partition

EXAMPLES = sorted(p for p in TOPOLOGIES.rglob("*.yaml") if not p.name.endswith(".test.yaml"))  # tests: edm test


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(TOPOLOGIES)))
def test_example_validates(path: Path) -> None:
    ok("validate", path)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quickstart_keeps_large_orders_and_dead_letters_invalid_ones(tmp_path: Path) -> None:
    topology = TOPOLOGIES / "quickstart" / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    ok("produce", "orders", "-f", TOPOLOGIES / "quickstart" / "orders.jsonl", *common)
    run = ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    assert "large order o-2 from BOB: 250" in run.stderr  # the log step shows results
    out = ok("consume", "large-orders", "--from-beginning", *common).lines()
    assert sorted((e["key"], e["value"]["customer"], e["value"]["total"]) for e in out) == [
        ("o-2", "BOB", 250), ("o-3", "CAROL", 120), ("o-5", "ERIN", 999.5)]
    dead = ok("consume", "orders-dlq", "--from-beginning", *common).lines()
    assert [d["key"] for d in dead] == ["o-4"]
    assert json.loads(dead[0]["value"]) == {"customer": "dave", "total": "not a number"}
    assert dead[0]["headers"]["edm.source.topic"] == "orders"
    assert "total" in dead[0]["headers"]["edm.error"]

    # A second run has nothing new to do: offsets were committed.
    again = ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    assert "large order" not in again.stderr
    assert len(ok("consume", "large-orders", "--from-beginning", *common).lines()) == 3


def test_user_activity_puts_each_users_events_on_the_murmur2_partition(tmp_path: Path) -> None:
    topology = TOPOLOGIES / "user-activity" / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    inputs = _events(TOPOLOGIES / "user-activity" / "clicks.jsonl")
    ok("produce", "clicks", "-f", TOPOLOGIES / "user-activity" / "clicks.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    out = ok("consume", "clicks-by-user", "--from-beginning", *common).lines()

    valid = [e["value"] for e in inputs if isinstance(e["value"].get("user_id"), str)]
    expected = [v for v in valid if v["type"] != "heartbeat"]
    assert len(out) == len(expected)
    per_user: dict[str, list[str]] = defaultdict(list)
    for event in sorted(out, key=lambda e: (e["partition"], e["offset"])):
        assert event["partition"] == default_partition(event["key"].encode(), 8)
        per_user[event["key"]].append(event["value"]["at"])
    for user, times in per_user.items():  # one user's events stay in their original order
        assert times == [v["at"] for v in expected if v["user_id"] == user]
    assert len({e["partition"] for e in out}) > 1


def test_branch_merge_routes_every_order_exactly_once(tmp_path: Path) -> None:
    topology = TOPOLOGIES / "branch-merge" / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    web = _events(TOPOLOGIES / "branch-merge" / "web-orders.jsonl")
    shop = _events(TOPOLOGIES / "branch-merge" / "shop-orders.jsonl")
    ok("produce", "web-orders", "-f", TOPOLOGIES / "branch-merge" / "web-orders.jsonl", *common)
    ok("produce", "shop-orders", "-f", TOPOLOGIES / "branch-merge" / "shop-orders.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)

    routed = {name: ok("consume", name, "--from-beginning", *common).lines()
              for name in ("orders-be", "orders-fr", "orders-other")}
    everything = web + shop
    assert sorted(e["key"] for e in routed["orders-be"]) == sorted(
        e["key"] for e in everything if e["value"]["country"] == "BE")
    assert sorted(e["key"] for e in routed["orders-fr"]) == sorted(
        e["key"] for e in everything if e["value"]["country"] == "FR")
    assert sorted(e["key"] for e in routed["orders-other"]) == sorted(
        e["key"] for e in everything if e["value"]["country"] not in ("BE", "FR"))
    for event in routed["orders-fr"]:
        assert event["value"]["vat"] == round(event["value"]["total"] * 0.2, 2)
    by_web = ok("consume", "orders-by-channel-web", "--from-beginning", *common).lines()
    by_shop = ok("consume", "orders-by-channel-shop", "--from-beginning", *common).lines()
    assert sorted(e["key"] for e in by_web) == sorted(e["key"] for e in web)
    assert sorted(e["key"] for e in by_shop) == sorted(e["key"] for e in shop)


def test_payroll_business_topology_runs_all_services(tmp_path: Path) -> None:
    business = TOPOLOGIES / "payroll" / "payroll.yaml"
    calc = TOPOLOGIES / "payroll" / "payroll-calculation.yaml"
    ok("produce", "timesheets", "-f", TOPOLOGIES / "payroll" / "timesheets.jsonl",
       "-t", calc, "--state-dir", tmp_path)
    run = ok("run", business, "--until-idle", "--state-dir", tmp_path)
    common = ["-t", business, "--state-dir", tmp_path]
    batches = ok("consume", "payment-batches", "--from-beginning", *common).lines()
    assert sorted(b["key"] for b in batches) == ["eng-2026-10", "eng-2026-11", "ops-2026-10"]
    payments = ok("consume", "payments", "--from-beginning", *common).lines()
    assert sorted((p["key"], p["value"]["batch"], p["value"]["amount"]) for p in payments) == [
        ("ada", "eng-2026-10", 7500.0), ("ada", "eng-2026-11", 7031.25), ("grace", "ops-2026-10", 6930.0),
        ("ken", "ops-2026-10", 2994.0), ("linus", "eng-2026-10", 6612.0)]
    notices = ok("consume", "payslip-notices", "--from-beginning", *common).lines()
    assert len(notices) == 5
    assert "ada: Your pay of 7500.0 EUR (eng-2026-10) was sent." in run.stderr
    dead = ok("consume", "timesheets-dlq", "--from-beginning", *common).lines()
    assert [d["key"] for d in dead] == ["sales"]  # period 2026-13 violates the schema


def test_no_two_examples_share_a_topic() -> None:
    """A user tries the examples one after another on one broker: none may meet another's
    topics (with other partition counts, or other events)."""
    from edm_runner.language import load_file
    from edm_runner.language.model import BusinessTopology
    owners: dict[str, set[str]] = defaultdict(set)
    for path in EXAMPLES:
        model = load_file(path)
        for service in model.services if isinstance(model, BusinessTopology) else [model]:
            for stream in service.streams.values():
                owners[stream.topic].add(path.parent.name)
    shared = {topic: sorted(examples) for topic, examples in owners.items() if len(examples) > 1}
    assert not shared


BROKERS = [pytest.param("local", id="local"), pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]


@pytest.mark.parametrize("kind", BROKERS)
def test_a_topic_with_other_partitions_says_how_to_get_out_and_the_way_works(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Another topology took the quickstart's `orders` topic with 1 partition: the run refuses,
    says how to get out, and the command it prints, run as printed, gets out."""
    suffix = uuid.uuid4().hex[:8]
    quickstart = yaml.safe_load((TOPOLOGIES / "quickstart" / "topology.yaml").read_text())
    quickstart["name"] += f"-{suffix}"
    for name, stream in quickstart["streams"].items():
        stream["topic"] = f"{name}-{suffix}"
    quickstart["streams"]["orders"]["value"]["schema"] = str(TOPOLOGIES.parent / "schemas" / "order.json")
    topology = tmp_path / "quickstart.yaml"
    topology.write_text(yaml.safe_dump(quickstart, sort_keys=False))
    broker = (f"kafka://{request.getfixturevalue('kafka_bootstrap')}" if kind == "kafka"
              else f"local:{tmp_path / 'broker'}")
    where = ["--broker", broker, "--state-dir", tmp_path / "state"]
    ok("produce", f"orders-{suffix}", "--partitions", "1", *where, stdin='{"key": "x", "value": {}}\n')

    refused = edm("run", topology, "--until-idle", *where)
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert f"'orders-{suffix}' has 1 partition(s) on the broker but the topology declares 3" in refused.stderr
    assert f"give stream 'orders' a topic of its own (`topic: quickstart-{suffix}-orders`" in refused.stderr
    hint = re.search(r"`(edm topics [^`]*)`", refused.stderr)
    assert hint and shlex.split(hint.group(1))[1:] == [
        "topics", "--delete", f"orders-{suffix}", "-t", str(topology), *map(str, where)]
    assert f"deleted orders-{suffix}" in ok(*shlex.split(hint.group(1))[1:]).stdout
    ok("produce", "orders", "-t", topology, "-f", TOPOLOGIES / "quickstart" / "orders.jsonl", *where)
    assert "6 in, 3 out" in ok("run", topology, "--until-idle", *where).stderr
