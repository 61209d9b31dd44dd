"""`edm reset` on both brokers: the plan printed first, nothing changed with --dry-run, then the
group's input offsets reset, internal topics deleted and local state wiped, so a new run
reprocesses the inputs into exactly the counts of the inputs (not twice them). It refuses while
an instance of the service holds the group."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.base import Broker, OutRecord, TopicPartition
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.errors import BrokerError
from helpers.topologies import broker_yaml, write_service
from helpers.reliability_flow import (PARTITIONS, edm, events, produce, reference_counts,
                                      run_until_idle, scan, write_topology)
from helpers.brokers import run_on, started

HOLDER = Path(__file__).parent / "helpers" / "reliability_holder.py"
BROKERS = [pytest.param("local", id="local"),
           pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]


class Setup:
    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.name = f"reset-{uuid.uuid4().hex[:8]}"
        self.bootstrap = request.getfixturevalue("kafka_bootstrap") if kind == "kafka" else None
        self.dir = tmp_path
        self.state_dir = tmp_path / "state"
        self.topology = write_topology(tmp_path, self.name, self.bootstrap)
        self.url = f"kafka://{self.bootstrap}" if self.bootstrap else f"local:{tmp_path / 'broker'}"

    def call(self, action):
        broker: Broker = (KafkaBroker({"bootstrap_servers": self.bootstrap}) if self.bootstrap
                          else LocalBroker(self.dir / "broker"))
        return run_on(broker, action)

    def reset(self, *args: str):
        return edm("reset", self.topology, "--state-dir", self.state_dir, *args)


@pytest.mark.parametrize("kind", BROKERS)
def test_reset_prints_the_plan_then_reprocesses_from_scratch(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = Setup(kind, tmp_path, request)
    inputs = events(200)
    s.call(lambda b: produce(b, s.name, inputs))
    assert run_until_idle(s.topology, s.state_dir).code == 0
    assert scan(s.topology, s.state_dir) == reference_counts(inputs)
    changelog = f"{s.name}-counts-changelog"
    ends = s.call(lambda b: b.group_offsets(s.name, [f"{s.name}-events"]))
    assert sum(ends.values()) == len(inputs)

    dry = s.reset("--dry-run")
    assert dry.code == 0, dry.stderr
    for p in range(PARTITIONS):
        end = ends[TopicPartition(f"{s.name}-events", p)]
        assert f"{s.name}-events[{p}]: {end} -> 0" in dry.stdout
    assert changelog in dry.stdout
    assert str(s.state_dir / "state" / s.name) in dry.stdout
    assert "stops nothing" in dry.stdout and "dry run: nothing changed" in dry.stdout
    assert changelog in s.call(lambda b: b.list_topics())  # the dry run changed nothing
    assert scan(s.topology, s.state_dir) == reference_counts(inputs)

    done = s.reset()
    assert done.code == 0, done.stderr
    assert f"reset {s.name}: done" in done.stdout
    assert changelog not in s.call(lambda b: b.list_topics())
    assert not (s.state_dir / "state" / s.name).exists()
    offsets = s.call(lambda b: b.group_offsets(s.name, [f"{s.name}-events"]))
    assert set(offsets.values()) <= {0}

    assert run_until_idle(s.topology, s.state_dir).code == 0
    assert scan(s.topology, s.state_dir) == reference_counts(inputs)  # counted once, not twice


def test_reset_to_a_datetime_reprocesses_the_events_from_then(tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    s = Setup("local", tmp_path, request)
    inputs = events(100)
    base = 1_795_428_000_000  # 2026-11-23T10:00:00Z; event i at base + i seconds

    async def timed(broker: Broker) -> None:
        await produce(broker, s.name, [])
        producer = broker.producer()
        for i, (key, value) in enumerate(inputs):
            producer.send(OutRecord(f"{s.name}-events", default_partition(key.encode(), PARTITIONS),
                                    key.encode(), json.dumps(value).encode(), base + i * 1000))
        await producer.flush()

    s.call(timed)
    assert run_until_idle(s.topology, s.state_dir).code == 0
    done = s.reset("--to-datetime", "2026-11-23T11:00:40+01:00")  # = base + 40 s
    assert done.code == 0, done.stderr
    assert run_until_idle(s.topology, s.state_dir).code == 0
    assert scan(s.topology, s.state_dir) == reference_counts(inputs[40:])


def test_reset_refuses_bad_arguments(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = Setup("local", tmp_path, request)
    both = s.reset("--to-earliest", "--to-datetime", "2026-01-01T00:00:00Z")
    assert both.code == 2 and "exclude each other" in both.stderr
    bad = s.reset("--to-datetime", "yesterday")
    assert bad.code == 1 and "ISO 8601" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("kind", BROKERS)
def test_reset_refuses_while_an_instance_holds_the_group(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = Setup(kind, tmp_path, request)
    s.call(lambda b: produce(b, s.name, events(10)))
    holder = subprocess.Popen([sys.executable, str(HOLDER), s.url, s.name, f"{s.name}-events"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "joined"
        refused = s.reset()
        assert refused.code == 1
        assert "is running" in refused.stderr and "stop every instance" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert s.reset().code == 0  # once the instance is gone


def test_local_broker_admin_offsets_groups_and_topics(tmp_path: Path) -> None:
    """What `edm reset` asks of the embedded broker: first offsets after compaction, offsets
    by time on out-of-order timestamps, a group lock held by another process, deletions."""
    tp = TopicPartition("t", 0)

    async def scenario(broker: LocalBroker) -> None:
        from edm_runner.brokers.base import TopicSpec
        await broker.ensure_topics([TopicSpec("t", 1, compacted=True), TopicSpec("gone", 1)])
        assert await broker.beginning_offsets([tp]) == {tp: 0}  # empty: the end offset
        producer = broker.producer()
        for i, ts in enumerate([10, 30, 20, 40]):
            producer.send(OutRecord("t", 0, b"k" if i < 2 else f"k{i}".encode(), b"v", ts))
        await producer.flush()
        assert await broker.offsets_for_times([tp], 25) == {tp: 1}  # first with ts >= 25
        assert await broker.offsets_for_times([tp], 41) == {tp: 4}  # none: the end offset
        await broker.compact("t")  # offset 0 (key k, superseded by offset 1) is removed
        assert await broker.beginning_offsets([tp]) == {tp: 1}

        assert not await broker.group_alive("g")
        await broker.set_group_offsets("g", {tp: 3})
        assert await broker.group_offsets("g", ["t", "gone"]) == {tp: 3}
        await broker.delete_topics(["gone", "never-existed"])
        assert "gone" not in await broker.list_topics()

    run_on(LocalBroker(tmp_path / "broker"), scenario)
    holder = subprocess.Popen([sys.executable, str(HOLDER), f"local:{tmp_path / 'broker'}", "g", "t"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "joined"

        async def while_held(broker) -> None:
            assert await broker.group_alive("g")
            with pytest.raises(BrokerError, match="another instance of service 'g' is running"):
                await broker.set_group_offsets("g", {tp: 0})

        run_on(LocalBroker(tmp_path / "broker"), while_held)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.kafka
def test_kafka_broker_admin_offsets_groups_and_topics(kafka_bootstrap: str) -> None:
    """The same administration on Kafka: offsets by time, committing for an empty group,
    describing a live group, deleting topics (waited for)."""
    topic, group = f"admin-{uuid.uuid4().hex[:8]}", f"admin-g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)

    async def go() -> None:
        from edm_runner.brokers.base import TopicSpec
        async with started(KafkaBroker({"bootstrap_servers": kafka_bootstrap})) as broker:
            await broker.ensure_topics([TopicSpec(topic, 1)])
            producer = broker.producer()
            await producer.start()
            for ts in (10, 30, 20, 40):
                producer.send(OutRecord(topic, 0, b"k", b"v", ts))
            await producer.flush()
            await producer.close()
            assert await broker.beginning_offsets([tp]) == {tp: 0}
            assert await broker.offsets_for_times([tp], 25) == {tp: 1}
            assert await broker.offsets_for_times([tp], 41) == {tp: 4}
            assert not await broker.group_alive(group)
            await broker.set_group_offsets(group, {tp: 3})
            assert await broker.group_offsets(group, [topic]) == {tp: 3}
            member = broker.consumer(group, [topic])
            await member.start()
            try:
                assert await broker.group_alive(group)
                with pytest.raises(BrokerError, match="still running"):
                    await broker.set_group_offsets(group, {tp: 0})
            finally:
                await member.close()
            await broker.delete_topics([topic, f"{topic}-never-existed"])
            assert topic not in await broker.list_topics()

    asyncio.run(go())


def _write_chain(directory: Path, name: str, bootstrap: str | None) -> tuple[Path, Path, Path]:
    """The count per key of ``<name>-events`` twice: as one service whose second pipeline reads
    the stream its first one writes (``<name>-chain.yaml``), and as a business topology of an
    upstream service writing that stream and a downstream one counting it (``<name>.yaml``).
    Returns (chain, business, downstream)."""
    broker = broker_yaml(directory, bootstrap)

    def streams(tagged: str) -> str:
        return f"""\
  events: {{topic: {name}-events, partitions: {PARTITIONS}, key: string, value: json}}
  tagged: {{topic: {tagged}, partitions: {PARTITIONS}, key: string, value: json}}"""
    count = """\
    from: tagged
    steps:
      - group_by_key: {}
      - count: {store: counts}
    to: counts"""
    tag = """\
    from: events
    steps:
      - map_values: "{'n': value.n, 'tagged': true}"
    to: tagged"""
    chain = write_service(directory, f"{name}-chain", bootstrap, f"""\
streams:
{streams(f"{name}-chain-tagged")}
  counts: {{topic: {name}-chain-counts, partitions: {PARTITIONS}, key: string, value: json}}
stores: {{counts: {{type: key_value}}}}
pipelines:
  tag:
{tag}
  count:
{count}
""")
    (directory / "up.yaml").write_text(f"""\
kind: microservice
name: {name}-up
streams:
{streams(f"{name}-tagged")}
pipelines:
  tag:
{tag}
""")
    down = directory / "down.yaml"
    down.write_text(f"""\
kind: microservice
name: {name}-down
streams:
{streams(f"{name}-tagged").splitlines()[1]}
  counts: {{topic: {name}-down-counts, partitions: {PARTITIONS}, key: string, value: json}}
stores: {{counts: {{type: key_value}}}}
pipelines:
  count:
{count}
""")
    business = directory / f"{name}.yaml"
    business.write_text(f"""\
kind: business
name: {name}
broker: {broker}
services: [up.yaml, down.yaml]
external_streams: [{name}-events]
""")
    return chain, business, down


@pytest.mark.parametrize("kind", BROKERS)
def test_reset_does_not_read_again_what_the_reprocessing_writes_again(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A stream written by the services being reset goes to its end (the reprocessing writes
    it again), so a count after a reset is the count of the inputs, not twice it; a service
    reset alone reads from the beginning a stream another service writes."""
    s = Setup(kind, tmp_path, request)
    chain, business, down = _write_chain(tmp_path, s.name, s.bootstrap)
    inputs = events(120)
    s.call(lambda b: produce(b, s.name, inputs))
    for topology in (chain, business):
        assert run_until_idle(topology, s.state_dir).code == 0
    assert scan(chain, s.state_dir) == reference_counts(inputs)
    assert scan(down, s.state_dir) == reference_counts(inputs)
    alone = edm("reset", business, "--service", f"{s.name}-down", "--state-dir", s.state_dir)
    assert alone.code == 0, alone.stderr
    assert "(its end" not in alone.stdout  # up is not reset: tagged is read again from its start
    assert run_until_idle(business, s.state_dir).code == 0
    assert scan(down, s.state_dir) == reference_counts(inputs)

    tagged = s.call(lambda b: b.end_offsets([TopicPartition(f"{s.name}-chain-tagged", p)
                                             for p in range(PARTITIONS)]))
    read = s.call(lambda b: b.group_offsets(f"{s.name}-chain", [f"{s.name}-events"]))

    dry = edm("reset", chain, "--state-dir", s.state_dir, "--dry-run")
    assert dry.code == 0, dry.stderr
    for p in range(PARTITIONS):
        end = tagged[TopicPartition(f"{s.name}-chain-tagged", p)]
        assert (f"{s.name}-chain-tagged[{p}]: {end} -> {end} "
                "(its end: this reset's services write it again)") in dry.stdout
        assert f"{s.name}-events[{p}]: {read[TopicPartition(f'{s.name}-events', p)]} -> 0\n" in dry.stdout
    for topology in (chain, business):
        done = edm("reset", topology, "--state-dir", s.state_dir)
        assert done.code == 0, done.stderr
        assert run_until_idle(topology, s.state_dir).code == 0
    assert scan(chain, s.state_dir) == reference_counts(inputs)  # not twice them
    assert scan(down, s.state_dir) == reference_counts(inputs)
