"""Stateful reliability on both brokers, with real `edm run` processes.

- A runner SIGKILLed at an exact point of its third batch (before produce, after produce before
  the commit, inside the LMDB write transaction), then restarted: the store read back with
  `edm state scan` equals the counts computed directly from the inputs, and the restart
  restored exactly the changelog records written after the task's checkpoint.
- The state directory deleted, then a restart: the store is restored from the changelog (every
  changelog record read) and equals the store before; a later restart with a checkpoint reads
  nothing from the changelog.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from edm_runner.brokers.base import Broker, TopicPartition
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from helpers.reliability_flow import (PARTITIONS, checkpoints, events, produce, reference_counts,
                                      run_until_idle, scan, write_topology)
from helpers.brokers import run_on, started

BROKERS = [pytest.param("local", id="local"),
           pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]
CRASH_POINTS = ["before_produce", "after_produce", "store_write"]


class Service:
    """One uniquely named count service on one broker, with its state directory."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.name = f"rel-{uuid.uuid4().hex[:8]}"
        self.bootstrap = request.getfixturevalue("kafka_bootstrap") if kind == "kafka" else None
        self.dir = tmp_path
        self.state_dir = tmp_path / "state"
        self.topology = write_topology(tmp_path, self.name, self.bootstrap)
        self.changelog = f"{self.name}-counts-changelog"

    def broker(self) -> Broker:
        if self.bootstrap is not None:
            return KafkaBroker({"bootstrap_servers": self.bootstrap})
        return LocalBroker(self.dir / "broker")

    def with_broker(self, action: Callable[[Broker], Awaitable]):
        return run_on(self.broker(), action)

    def produce(self, inputs: list[tuple[str, dict]]) -> None:
        self.with_broker(lambda b: produce(b, self.name, inputs))

    def changelog_ends(self) -> dict[str, int]:
        """End offset of each changelog partition, by task (``0_<partition>``)."""
        async def ends(broker: Broker) -> dict[str, int]:
            async with started(broker.consumer(None, [self.changelog])) as consumer:
                found = await consumer.end_offsets(
                    [TopicPartition(self.changelog, p) for p in range(PARTITIONS)])
            return {f"0_{tp.partition}": offset for tp, offset in found.items()}
        return self.with_broker(ends)

    def changelog_records(self) -> dict[str, int]:
        """Records stored in each changelog partition (compaction may have removed some)."""
        async def count(broker: Broker) -> dict[str, int]:
            async with started(broker.consumer(None, [self.changelog])) as consumer:
                tps = [TopicPartition(self.changelog, p) for p in range(PARTITIONS)]
                ends = await consumer.end_offsets(tps)
                counts = dict.fromkeys(tps, 0)
                while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                    for tp, records in (await consumer.getmany(timeout_ms=1000, max_records=1000)).items():
                        counts[tp] += len(records)
            return {f"0_{tp.partition}": n for tp, n in counts.items()}
        return self.with_broker(count)


def behind_checkpoint(service: Service) -> dict[str, int]:
    """Per task, changelog records written after the task's checkpoint: what a restart must read."""
    marks = checkpoints(service.topology, service.state_dir)
    ends = service.changelog_ends()
    behind = {}
    for task, end in ends.items():
        applied = marks.get(task, {}).get("changelogs", {}).get(f"{service.changelog}:{task[2:]}", 0)
        behind[task] = end - applied
    return behind


@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("kind", BROKERS)
def test_sigkill_at_a_crash_point_then_restart_keeps_the_store_exact(
        kind: str, point: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Service(kind, tmp_path, request)
    inputs = events()
    service.produce(inputs)

    crashed = run_until_idle(service.topology, service.state_dir, crash_at=f"{point}:3")
    assert crashed.killed, f"the runner was not killed at {point}:3 (exit {crashed.code})\n{crashed.stderr}"
    must_restore = behind_checkpoint(service)
    if point == "before_produce":
        assert sum(must_restore.values()) == 0  # nothing of the killed batch reached the changelog
    else:  # the killed batch's changelog records are durable, its LMDB transaction is not
        assert sum(must_restore.values()) > 0

    restarted = run_until_idle(service.topology, service.state_dir)
    assert restarted.code == 0, restarted.stderr
    assert restarted.restored() == {t: n for t, n in must_restore.items() if n}, restarted.stderr
    assert scan(service.topology, service.state_dir) == reference_counts(inputs)


@pytest.mark.parametrize("kind", BROKERS)
def test_a_deleted_state_directory_is_restored_from_the_changelog(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Service(kind, tmp_path, request)
    first = events(300)
    service.produce(first)
    assert run_until_idle(service.topology, service.state_dir).code == 0
    before = scan(service.topology, service.state_dir)
    assert before == reference_counts(first)

    shutil.rmtree(service.state_dir / "state" / service.name)
    in_changelog = service.changelog_records()
    rebuilt = run_until_idle(service.topology, service.state_dir)
    assert rebuilt.code == 0, rebuilt.stderr
    assert rebuilt.restored() == {t: n for t, n in in_changelog.items() if n}, rebuilt.stderr
    assert scan(service.topology, service.state_dir) == before

    # With a checkpoint at the changelog's end, a restart reads nothing from the changelog.
    second = events(100, first=300)
    service.produce(second)
    resumed = run_until_idle(service.topology, service.state_dir)
    assert resumed.code == 0, resumed.stderr
    assert sum(resumed.restored().values()) == 0, resumed.stderr
    assert scan(service.topology, service.state_dir) == reference_counts(first + second)


def test_a_malformed_crash_point_stops_the_runner_before_it_processes(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Service("local", tmp_path, request)
    service.produce(events(10))
    result = run_until_idle(service.topology, service.state_dir, crash_at="after_prodcue:1")
    assert result.code == 1 and "EDM_CRASH_AT='after_prodcue:1' is not POINT:N" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (service.state_dir / "state").exists()


def test_a_malformed_hold_point_is_refused_when_faults_is_imported() -> None:
    for raw in ("restor:/tmp/go", "restore:", "restore"):
        result = subprocess.run([sys.executable, "-c", "import edm_runner.faults"], capture_output=True, text=True,
                                env={**os.environ, "EDM_HOLD_AT": raw})
        assert result.returncode == 1 and f"EDM_HOLD_AT={raw!r} is not POINT:FILE" in result.stderr, result.stderr
