"""edm on a three-node Kafka cluster (the `kafka_cluster` fixture: replication factor 3,
min.insync.replicas 2), where the brokers learn of new topics at different moments and
partition leaders can die.

- A fresh stateful service's first `edm run` succeeds: its changelog, created a moment before,
  must not be reported missing by a broker that does not know it yet (it was, in 8 of 19
  first starts).
- A partition leader SIGKILLed mid-stream loses nothing under at-least-once: every input is
  counted, and the store is exact.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from edm_runner import devkafka
from edm_runner.brokers.base import Broker, TopicPartition, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from helpers.kafka_flow import Runner
from helpers.reliability_flow import events, produce, reference_counts, run_until_idle, scan, write_topology
from helpers.brokers import started

FIRST_STARTS = 5
ENSURE_ROUNDS = 10
STREAM_EVENTS = 3000
CHUNK = 30  # events per produce call while streaming
DEADLINE_S = 120.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def feed(bootstrap: str, name: str, inputs: list[tuple[str, dict]]) -> None:
    async with started(KafkaBroker({"bootstrap_servers": bootstrap})) as broker:
        await produce(broker, name, inputs)


@pytest.mark.kafka
def test_ensured_topics_are_known_to_every_broker(kafka_cluster: devkafka.KafkaInfo) -> None:
    """Right after ``ensure_topics`` returns, each broker, asked on its own, lists every topic
    with a leader for each partition (the mechanism behind the first-start failures)."""
    async def scenario() -> list[str]:
        broker = KafkaBroker({"bootstrap_servers": kafka_cluster.bootstrap})
        await broker.start()
        clients = {node.node_id: AIOKafkaClient(bootstrap_servers=node.address) for node in kafka_cluster.nodes}
        unknown: list[str] = []
        try:
            for client in clients.values():
                await client.bootstrap()
            for _ in range(ENSURE_ROUNDS):
                names = [unique("known") for _ in range(3)]
                await broker.ensure_topics([TopicSpec(name, 2) for name in names])
                for node_id, client in clients.items():
                    response = await client.send(node_id, MetadataRequest(names, allow_auto_topic_creation=False))
                    unknown += [f"{t['topic']} on node {node_id}" for t in response.to_object()["topics"]
                                if t["error_code"] != 0 or not all(p["leader"] >= 0 for p in t["partitions"])]
        finally:
            for client in clients.values():
                await client.close()
            await broker.close()
        return unknown

    assert asyncio.run(scenario()) == []


@pytest.mark.kafka
def test_a_fresh_stateful_service_starts_the_first_time(tmp_path: Path, kafka_cluster: devkafka.KafkaInfo) -> None:
    for attempt in range(1, FIRST_STARTS + 1):
        name = unique("fresh")
        directory = tmp_path / name
        directory.mkdir()
        topology = write_topology(directory, name, kafka_cluster.bootstrap)
        inputs = events()
        asyncio.run(feed(kafka_cluster.bootstrap, name, inputs))
        run = run_until_idle(topology, directory / "state")
        assert run.code == 0, f"first start {attempt} of {FIRST_STARTS} ({name}) exited {run.code}:\n" \
                              + "\n".join(run.stderr.splitlines()[-20:])
        for symptom in ("Unclosed", "UnknownTopicOrPartition", "not found in cluster metadata"):
            assert symptom not in run.stderr, run.stderr
        assert scan(topology, directory / "state") == reference_counts(inputs)


async def partition_leader(bootstrap: str, topic: str, partition: int) -> int:
    async with started(AIOKafkaAdminClient(bootstrap_servers=bootstrap)) as admin:
        [described] = await admin.describe_topics([topic])
        return next(p["leader"] for p in described["partitions"] if p["partition"] == partition)


async def committed_to_end(broker: Broker, group: str, topic: str, ends: dict[TopicPartition, int],
                           runner: Runner) -> None:
    """Polls the group's committed offsets until they reach ``ends`` (fails after DEADLINE_S,
    or at once if the runner died)."""
    deadline = time.monotonic() + DEADLINE_S
    while (committed := await broker.group_offsets(group, [topic])) != ends:
        assert runner.alive(), f"the runner died:\n{runner.stderr()}"
        assert time.monotonic() < deadline, \
            f"committed {committed}, end offsets {ends} after {DEADLINE_S:g} s; the runner's log ends with:\n" \
            + "\n".join(runner.stderr().splitlines()[-30:])
        await asyncio.sleep(0.2)  # the broker's offsets are polled: there is no event to await


@pytest.mark.kafka
def test_a_partition_leader_killed_mid_stream_loses_nothing(tmp_path: Path,
                                                            kafka_cluster: devkafka.KafkaInfo) -> None:
    name = unique("leader")
    topic = f"{name}-events"
    topology = write_topology(tmp_path, name, kafka_cluster.bootstrap)
    state_dir = tmp_path / "state"
    inputs = events(STREAM_EVENTS)
    killed: list[int] = []

    async def scenario() -> None:
        broker = KafkaBroker({"bootstrap_servers": kafka_cluster.bootstrap})
        await broker.start()
        runner: Runner | None = None
        try:
            await produce(broker, name, inputs[:CHUNK])
            runner = Runner(topology, "--state-dir", str(state_dir))

            async def stream() -> None:
                for start in range(CHUNK, len(inputs), CHUNK):
                    await produce(broker, name, inputs[start:start + CHUNK])
                    await asyncio.sleep(0.02)  # the input rate, not synchronization

            streaming = asyncio.create_task(stream())
            deadline = time.monotonic() + DEADLINE_S
            while sum((await broker.group_offsets(name, [topic])).values()) < STREAM_EVENTS // 5:
                assert runner.alive() and time.monotonic() < deadline, runner.stderr()
                await asyncio.sleep(0.1)  # polled, as above
            leader = await partition_leader(kafka_cluster.bootstrap, topic, 0)
            await asyncio.to_thread(devkafka.stop, kafka_cluster.workdir, node=leader, kill=True)
            killed.append(leader)
            assert not streaming.done(), "the input finished before the kill: not mid-stream"
            await streaming
            async with started(broker.consumer(None, [topic])) as reader:
                ends = await reader.end_offsets(sorted(reader.assignment()))
            assert sum(ends.values()) == STREAM_EVENTS
            await committed_to_end(broker, name, topic, ends, runner)
            assert await asyncio.to_thread(runner.stop) == 0, runner.stderr()
            assert "Traceback" not in runner.stderr(), runner.stderr()
        finally:
            if runner is not None and runner.alive():
                runner.kill()
            await broker.close()

    try:
        asyncio.run(scenario())
    finally:
        devkafka.start(kafka_cluster.workdir)  # the killed node comes back for the next test
    assert killed, "no node was killed"
    assert scan(topology, state_dir) == reference_counts(inputs)
    assert latest_outputs(name, kafka_cluster.bootstrap) == reference_counts(inputs)


def latest_outputs(name: str, bootstrap: str) -> dict[str, int]:
    """The last count written per key to ``<name>-counts`` (string keys, JSON values)."""
    async def read() -> dict[str, int]:
        broker = KafkaBroker({"bootstrap_servers": bootstrap})
        await broker.start()
        reader = broker.consumer(None, [f"{name}-counts"])
        await reader.start()
        try:
            ends = await reader.end_offsets(sorted(reader.assignment()))
            latest: dict[str, int] = {}
            while any([await reader.position(tp) < end for tp, end in ends.items()]):
                for records in (await reader.getmany(timeout_ms=200, max_records=5000)).values():
                    for r in records:
                        latest[r.key.decode()] = json.loads(r.value)
            return latest
        finally:
            await reader.close()
            await broker.close()
    return asyncio.run(read())
