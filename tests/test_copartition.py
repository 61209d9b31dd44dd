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
from edm_runner.invocation import Invocation
from edm_runner.runtime import run_services
from edm_runner.runtime.copartition import CopartitionError
from edm_runner.serde import make_serde
from edm_runner.language import load_file
from edm_runner.language.model import SerdeSpec
from tests.test_kafka_conformance import produce, read_all
from helpers.brokers import started

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

# The same join after a group_by and a count: the group_by topic takes the table's key format too.
GROUP_BY_THEN_JOIN = REPARTITION_THEN_JOIN.replace("""\
      - select_key: value.user
      - repartition: {name: by-user, partitions: 4}
      - join: {table: users-table, kind: left, value: "{'user': key, 'name': other.name}"}
""", """\
      - group_by: {key: value.user, name: by-user, partitions: 4}
      - count: {store: counts}
      - join: {table: users-table, kind: left, value: "{'user': key, 'name': other.name}"}
""").replace("pipelines:", "stores: {counts: {}}\npipelines:")
SCENARIOS = {"repartition": REPARTITION_THEN_JOIN, "group_by": GROUP_BY_THEN_JOIN}

# Users before activity in event time: a task joins in timestamp order (runtime.ordering).
USERS = [{"key": f"u{i}", "value": {"name": f"User {i}"}, "timestamp": 1_600_000_000_000 + i} for i in range(1, 9)]
ACTIVITY = [{"value": {"user": f"u{1 + i % 8}", "n": i}, "timestamp": 1_700_000_000_000 + i} for i in range(40)]


async def _join_outputs(broker: Broker, directory: Path, text: str, suffix: str) -> list[dict]:
    """Runs ``text`` on ``broker`` over USERS and ACTIVITY; the values written to `enriched`."""
    path = directory / "r.yaml"
    path.write_text(text)
    topology = load_file(path)
    topology.name = f"r-{suffix}"
    for stream in topology.streams.values():
        stream.topic = f"{stream.topic}-{suffix}"
    async with started(broker):
        await produce(broker, topology.streams["users"], USERS)
        await produce(broker, topology.streams["activity"], ACTIVITY)
        await asyncio.wait_for(run_services([topology], broker, until_idle=True, state_dir=directory / "state"), 120)
        partitions = await read_all(broker, topology.streams["enriched"].topic)
    decode = make_serde(topology.streams["enriched"].value).decode
    return [decode(value) for records in partitions.values() for _, value, _, _ in records]


def _assert_every_event_joined(outputs: list[dict]) -> None:
    assert len(outputs) == len(ACTIVITY)
    assert sorted(outputs, key=lambda v: v["user"]) == sorted(
        ({"user": e["value"]["user"], "name": f"User {e['value']['user'][1:]}"} for e in ACTIVITY),
        key=lambda v: v["user"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_join_after_repartitioning_joins_every_event_on_the_embedded_broker(scenario: str, tmp_path: Path) -> None:
    outputs = asyncio.run(_join_outputs(LocalBroker(tmp_path / "broker"), tmp_path, SCENARIOS[scenario], "local"))
    _assert_every_event_joined(outputs)


@pytest.mark.kafka
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_join_after_repartitioning_joins_every_event_on_kafka(scenario: str, kafka_bootstrap: str,
                                                              tmp_path: Path) -> None:
    broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
    outputs = asyncio.run(_join_outputs(broker, tmp_path, SCENARIOS[scenario], uuid.uuid4().hex[:8]))
    _assert_every_event_joined(outputs)


@pytest.mark.parametrize("kind", ["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_run_refuses_an_internal_topic_left_on_the_broker_with_another_partition_count(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(REPARTITION_THEN_JOIN)
    topology = load_file(path)
    if kind == "local":
        broker: Broker = LocalBroker(tmp_path / "broker")
    else:  # a shared broker: topics of their own
        broker = KafkaBroker({"bootstrap_servers": request.getfixturevalue("kafka_bootstrap")})
        topology.name = f"r-{uuid.uuid4().hex[:8]}"
        for stream in topology.streams.values():
            stream.topic = f"{stream.topic}-{topology.name}"
    internal = f"{topology.name}-by-user-repartition"

    async def main() -> None:
        await broker.start()
        try:  # an earlier version of the file repartitioned into 2 partitions
            await broker.ensure_topics([TopicSpec(internal, 2)])
            with pytest.raises(CopartitionError) as info:
                await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state",
                                   invocation=Invocation(str(path), state_dir="my state"))
        finally:
            await broker.close()
        message = str(info.value)
        assert (f"repartition topic '{internal}' has 2 partitions but table 'users-table' "
                f"(topic '{topology.streams['users'].topic}') has 4 partitions") in message
        assert f"topic '{internal}' has 2 partition(s) on the broker but 4 are declared" in message
        # The way out is the runtime's, as for any topic with another count: it repeats the options.
        assert f"`edm reset {path} --state-dir 'my state'` deletes it" in message

    asyncio.run(main())


def test_run_refuses_a_join_of_different_key_formats(tmp_path: Path) -> None:
    """A model built in code skips `edm validate`; the run checks the same rule."""
    path = tmp_path / "r.yaml"
    path.write_text(REPARTITION_THEN_JOIN
                    .replace("activity: {partitions: 1,", "activity: {partitions: 4,")
                    .replace("      - select_key: value.user\n"
                             "      - repartition: {name: by-user, partitions: 4}\n", ""))
    topology = load_file(path)
    topology.streams["users"].key = SerdeSpec("json")

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            with pytest.raises(CopartitionError) as info:
                await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state")
        assert ("stream 'activity' (topic 'activity') has key format string but table 'users-table' "
                "(topic 'users') has key format json") in str(info.value)

    asyncio.run(main())


@pytest.mark.parametrize("formats, key", [("", b'"u1"'), (", key_format: string", b"u1")])
def test_a_repartition_feeding_no_join_writes_json_keys_unless_it_sets_key_format(
        formats: str, key: bytes, tmp_path: Path) -> None:
    text = """\
kind: microservice
name: r
streams:
  activity: {partitions: 1}
  out: {partitions: 2}
pipelines:
  p:
    from: activity
    steps:
      - select_key: value.user
      - repartition: {name: by-user, partitions: 2%s}
    to: out
""" % formats
    path = tmp_path / "r.yaml"
    path.write_text(text)
    topology = load_file(path)

    async def main() -> dict[int, list[tuple]]:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await produce(broker, topology.streams["activity"], [{"value": {"user": "u1"}}])
            await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state")
            return await read_all(broker, "r-by-user-repartition")

    records = [r for rs in asyncio.run(main()).values() for r in rs]
    assert [r[0] for r in records] == [key]
