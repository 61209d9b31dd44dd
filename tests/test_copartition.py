"""Copartitioning: equal partition counts, the same key format and the same partitioner on
both sides of a join. An internal topic takes the key format of what it is copartitioned
with, so a repartition before a join lands each key where the table keeps it, on the
embedded broker and on Kafka alike."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.base import Broker, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.runtime import run_services
from edm_runner.runtime.copartition import CopartitionError
from edm_runner.serde import make_serde
from edm_runner.spec import load_file
from edm_runner.spec.model import SerdeSpec
from tests.test_kafka_conformance import produce, read_all

REPARTITION_THEN_JOIN = """\
kind: microservice
name: r
streams:
  activity: {partitions: 1, type: keyed, key: string, value: json}
  users: {partitions: 4, type: entity, key: string, value: json}
  enriched: {partitions: 4, type: keyed, key: string, value: json}
tables: {users-table: {from: users}}
pipelines:
  enrich:
    from: activity
    steps:
      - select_key: value.user
      - repartition: {name: by-user, partitions: 4}
      - join: {table: users-table, kind: left, value: "{'user': key, 'name': other.name}"}
    to: enriched
"""

USERS = [{"key": f"u{i}", "value": {"name": f"User {i}"}} for i in range(1, 9)]
ACTIVITY = [{"value": {"user": f"u{1 + i % 8}", "n": i}} for i in range(40)]


async def _repartition_then_join(broker: Broker, directory: Path, suffix: str) -> list[dict]:
    path = directory / "r.yaml"
    path.write_text(REPARTITION_THEN_JOIN)
    topology = load_file(path)
    topology.name = f"r-{suffix}"
    for stream in topology.streams.values():
        stream.topic = f"{stream.topic}-{suffix}"
    await broker.start()
    try:
        await produce(broker, topology.streams["users"], USERS)
        await produce(broker, topology.streams["activity"], ACTIVITY)
        await asyncio.wait_for(run_services([topology], broker, until_idle=True, state_dir=directory / "state"), 120)
        partitions = await read_all(broker, topology.streams["enriched"].topic)
    finally:
        await broker.close()
    decode = make_serde(topology.streams["enriched"].value).decode
    return [decode(value) for records in partitions.values() for _, value, _, _ in records]


def _assert_every_event_joined(outputs: list[dict]) -> None:
    assert len(outputs) == len(ACTIVITY)
    assert sorted(outputs, key=lambda v: v["user"]) == sorted(
        ({"user": e["value"]["user"], "name": f"User {e['value']['user'][1:]}"} for e in ACTIVITY),
        key=lambda v: v["user"])


def test_repartition_then_join_joins_every_event_on_the_embedded_broker(tmp_path: Path) -> None:
    outputs = asyncio.run(_repartition_then_join(LocalBroker(tmp_path / "broker"), tmp_path, "local"))
    _assert_every_event_joined(outputs)


@pytest.mark.kafka
def test_repartition_then_join_joins_every_event_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
    outputs = asyncio.run(_repartition_then_join(broker, tmp_path, uuid.uuid4().hex[:8]))
    _assert_every_event_joined(outputs)


def test_run_refuses_an_internal_topic_left_on_the_broker_with_another_partition_count(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(REPARTITION_THEN_JOIN)
    topology = load_file(path)

    async def main() -> None:
        broker = LocalBroker(tmp_path / "broker")
        await broker.start()
        try:  # an earlier version of the file repartitioned into 2 partitions
            await broker.ensure_topics([TopicSpec("r-by-user-repartition", 2)])
            with pytest.raises(CopartitionError) as info:
                await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state")
        finally:
            await broker.close()
        message = str(info.value)
        assert ("repartition topic 'r-by-user-repartition' has 2 partitions but table 'users-table' "
                "(topic 'users') has 4 partitions") in message
        assert "topic 'r-by-user-repartition' has 2 partition(s) on the broker but 4 are declared" in message

    asyncio.run(main())


def test_run_refuses_a_join_of_different_key_formats(tmp_path: Path) -> None:
    """A model built in code skips `edm validate`; the run checks the same rule."""
    path = tmp_path / "r.yaml"
    path.write_text(REPARTITION_THEN_JOIN.replace("activity: {partitions: 1,", "activity: {partitions: 4,")
                    .replace("      - select_key: value.user\n      - repartition: {name: by-user, partitions: 4}\n", ""))
    topology = load_file(path)
    topology.streams["users"].key = SerdeSpec("json")

    async def main() -> None:
        broker = LocalBroker(tmp_path / "broker")
        await broker.start()
        try:
            with pytest.raises(CopartitionError) as info:
                await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state")
        finally:
            await broker.close()
        assert ("stream 'activity' (topic 'activity') has key format string but table 'users-table' "
                "(topic 'users') has key format json") in str(info.value)

    asyncio.run(main())
