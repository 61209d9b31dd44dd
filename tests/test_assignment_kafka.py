"""Three real `edm run` instances in one group on Kafka: the assignor's plan as they log it."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.kafka_flow import Runner
from tests.helpers.topologies import write_service

pytestmark = pytest.mark.kafka

PARTITIONS = 6


def write_topology(directory: Path, name: str, bootstrap: str) -> Path:
    """Sub-topology 0: events joined with the users table (copartitioned, 6 partitions);
    sub-topology 1: a count behind a group_by. Every store has one standby (the service default)."""
    return write_service(directory, name, bootstrap, f"""\
streams:
  events: {{topic: {name}-events, partitions: {PARTITIONS}}}
  users: {{topic: {name}-users, partitions: {PARTITIONS}, type: entity}}
  counts-out: {{topic: {name}-counts, partitions: {PARTITIONS}}}
tables:
  users-table: {{from: users}}
stores:
  counts: {{type: key_value}}
pipelines:
  count:
    from: events
    steps:
      - join: {{table: users-table, kind: left, value: "value"}}
      - group_by: {{key: key, name: by-key}}
      - count: {{store: counts}}
    to: counts-out
""", processing="{standby_replicas: 1}")


def last_assignments(runners: dict[str, Runner]) -> dict[str, dict]:
    """Each instance's latest `assignment {...}` log line."""
    result = {}
    for name, runner in runners.items():
        assert runner.alive(), f"{name} exited:\n{runner.stderr()}"
        lines = [line.split("assignment ", 1)[1] for line in runner.stderr().splitlines()
                 if "edm.assignment: assignment {" in line]
        if lines:
            result[name] = json.loads(lines[-1])
    return result


def settled(docs: dict[str, dict], instances: list[str], tasks: set[str]) -> bool:
    if set(docs) != set(instances):
        return False
    actives = [t for d in docs.values() for t in d["active"]]
    return sorted(actives) == sorted(tasks)


def test_three_instances_share_every_task_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    name = f"asg-{uuid.uuid4().hex[:8]}"
    topology = write_topology(tmp_path, name, kafka_bootstrap)
    tasks = {f"{sub}_{p}" for sub in (0, 1) for p in range(PARTITIONS)}
    instances = ["pod-0", "pod-1", "pod-2"]
    runners = {i: Runner(topology, "--instance-id", i, "--state-dir", str(tmp_path / i)) for i in instances}
    try:
        deadline = time.monotonic() + 90
        docs = last_assignments(runners)
        while not settled(docs, instances, tasks):
            assert time.monotonic() < deadline, f"no settled assignment within 90 s: {docs}\n" + \
                "\n".join(r.stderr()[-3000:] for r in runners.values())
            time.sleep(0.2)  # polling the runners' logs: there is no event to await across processes
            docs = last_assignments(runners)
    finally:
        codes = {i: r.stop() for i, r in runners.items()}
    assert codes == dict.fromkeys(instances, 0), {i: r.stderr()[-2000:] for i, r in runners.items()}

    assert sorted(len(d["active"]) for d in docs.values()) == [4, 4, 4]  # even
    owner = {t: i for i, d in docs.items() for t in d["active"]}
    for d in docs.values():
        # copartitioned: partition N of users and of events on the instance running task 0_N
        parts = d["partitions"]
        for topic in (f"{name}-events", f"{name}-users"):
            assert parts.get(topic, []) == sorted(int(t.split("_")[1]) for t in d["active"] if t.startswith("0_"))
        assert parts.get(f"{name}-by-key-repartition", []) == \
            sorted(int(t.split("_")[1]) for t in d["active"] if t.startswith("1_"))
        # the users table and the counts store have one standby each: never beside the active
        assert sorted(d["standby"]) == sorted(set(d["standby"]))
        assert not set(d["standby"]) & set(d["active"])
    standbys = sorted(t for d in docs.values() for t in d["standby"])
    assert standbys == sorted(tasks)  # one standby per task (both sub-topologies have state)
    assert all(owner[t] != i for i, d in docs.items() for t in d["standby"])
