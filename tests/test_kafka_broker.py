"""KafkaBroker against a real Apache Kafka broker (the session fixture `kafka_bootstrap`)."""
from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
import warnings
from typing import Awaitable, Callable, TypeVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from edm_runner.brokers.base import OutRecord, Record, TopicPartition, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker, KafkaConsumer
from edm_runner.errors import BrokerError
from helpers.brokers import run_on, started

T = TypeVar("T")


def unique(prefix: str) -> str:
    """Topic and group names are unique per test: the broker may outlive the session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def with_broker(bootstrap: str, body: Callable[[KafkaBroker], Awaitable[T]]) -> T:
    return run_on(KafkaBroker({"bootstrap_servers": bootstrap, "client_id": "edm-test"}), body)


async def read_until(consumer: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Every record until ``count`` arrived (fails after ``timeout_s``)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        for batch in (await consumer.getmany(timeout_ms=500, max_records=1000)).values():
            records.extend(batch)
    return records


async def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    async with started(AIOKafkaAdminClient(bootstrap_servers=bootstrap)) as admin:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_, _, _, _, entries)] = response.resources
        return {entry[0]: entry[1] for entry in entries}


@pytest.mark.kafka
def test_ensure_topics_creates_topics_with_their_configs(kafka_bootstrap: str) -> None:
    events, entities, short = unique("events"), unique("entities"), unique("short")

    async def body(broker: KafkaBroker) -> None:
        specs = [TopicSpec(events, 3), TopicSpec(entities, 2, compacted=True),
                 TopicSpec(short, 1, config={"retention.ms": "60000"})]
        await broker.ensure_topics(specs)
        await broker.ensure_topics(specs)  # idempotent
        topics = await broker.list_topics()
        assert (topics[events], topics[entities], topics[short]) == (3, 2, 1)
        assert not any(name.startswith("__") for name in topics)
        event_configs = await topic_configs(kafka_bootstrap, events)
        assert (event_configs["retention.ms"], event_configs["cleanup.policy"]) == ("-1", "delete")
        assert (await topic_configs(kafka_bootstrap, entities))["cleanup.policy"] == "compact"
        assert (await topic_configs(kafka_bootstrap, short))["retention.ms"] == "60000"

    with_broker(kafka_bootstrap, body)


@pytest.mark.kafka
def test_partition_count_mismatch_names_topic_and_both_counts(kafka_bootstrap: str) -> None:
    topic = unique("counts")

    async def body(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 2)])
        with pytest.raises(BrokerError) as caught:
            await broker.ensure_topics([TopicSpec(topic, 8)])
        message = str(caught.value)
        assert f"'{topic}' has 2 partition(s) on the broker but the topology declares 8" in message
        assert (await broker.list_topics())[topic] == 2  # nothing was changed

    with_broker(kafka_bootstrap, body)


@pytest.mark.kafka
def test_missing_topics_without_create_are_listed(kafka_bootstrap: str) -> None:
    present, gone1, gone2 = unique("present"), unique("gone"), unique("gone")

    async def body(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(present, 1)])
        with pytest.raises(BrokerError) as caught:
            await broker.ensure_topics(
                [TopicSpec(present, 1), TopicSpec(gone1, 1), TopicSpec(gone2, 1)], create=False)
        assert f"missing on kafka at {kafka_bootstrap}: {gone1}, {gone2};" in str(caught.value)
        topics = await broker.list_topics()
        assert gone1 not in topics and gone2 not in topics

    with_broker(kafka_bootstrap, body)


@pytest.mark.kafka
def test_round_trip_keeps_keys_values_headers_timestamps_and_explicit_partitions(
        kafka_bootstrap: str) -> None:
    topic = unique("round-trip")
    # The same key goes to every partition: only the explicit partition can place it there.
    sent = [
        OutRecord(topic, 2, b"same", b'{"n": 1}', 1_700_000_000_001, (("trace", b"abc"),)),
        OutRecord(topic, 0, b"same", None, 1_700_000_000_002),  # tombstone
        OutRecord(topic, 1, None, b"unkeyed", 1_700_000_000_003,
                  (("a", b""), ("a", b"\x00\xff"), ("b", b"2"))),  # repeated and binary headers
        OutRecord(topic, 2, b"same", b"", 5),  # empty value, old timestamp
        OutRecord(topic, 2, b"other", b"x" * 100_000, 1_700_000_000_004),
    ]

    async def body(broker: KafkaBroker) -> list[Record]:
        await broker.ensure_topics([TopicSpec(topic, 3)])
        async with started(broker.producer()) as producer:
            for record in sent:
                producer.send(record)
            await producer.flush()
        async with started(broker.consumer(unique("group"), [topic])) as consumer:
            return await read_until(consumer, len(sent))

    received = with_broker(kafka_bootstrap, body)
    by_partition = {p: [r for r in received if r.partition == p] for p in range(3)}
    for partition, records in by_partition.items():
        expected = [s for s in sent if s.partition == partition]
        assert [r.offset for r in records] == list(range(len(expected)))
        assert [(r.topic, r.key, r.value, r.timestamp_ms, r.headers) for r in records] == \
               [(s.topic, s.key, s.value, s.timestamp_ms, s.headers) for s in expected]


@pytest.mark.kafka
def test_committed_offsets_resume_the_group(kafka_bootstrap: str) -> None:
    topic, group = unique("resume"), unique("group")
    tp = TopicPartition(topic, 0)

    async def body(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 1)])
        producer = broker.producer()
        await producer.start()
        for i in range(10):
            producer.send(OutRecord(topic, 0, b"k%d" % i, b"v%d" % i, 1000 + i))
        await producer.flush()
        await producer.close()

        first = broker.consumer(group, [topic])
        await first.start()
        assert [r.offset for r in await read_until(first, 10)] == list(range(10))
        assert first.assignment() == {tp}
        assert await first.committed(tp) is None
        await first.commit({tp: 6})
        assert await first.committed(tp) == 6
        assert await first.end_offsets([tp]) == {tp: 10}
        assert await first.position(tp) == 10
        first.seek(tp, 3)
        assert [r.offset for r in await read_until(first, 7)] == list(range(3, 10))
        await first.close()

        second = broker.consumer(group, [topic])
        await second.start()
        resumed = await read_until(second, 4)
        assert [(r.offset, r.value) for r in resumed] == [(i, b"v%d" % i) for i in range(6, 10)]
        await second.close()

        other_group = broker.consumer(unique("group"), [topic])
        await other_group.start()
        assert [r.offset for r in await read_until(other_group, 10)] == list(range(10))
        await other_group.close()

    with_broker(kafka_bootstrap, body)


@pytest.mark.kafka
def test_consumer_without_group_reads_from_beginning_or_end(kafka_bootstrap: str) -> None:
    topic = unique("nogroup")
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

    async def body(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 2)])
        producer = broker.producer()
        await producer.start()
        for i in range(4):
            producer.send(OutRecord(topic, i % 2, None, b"old%d" % i, 1))
        await producer.flush()

        reader = broker.consumer(None, [topic])
        await reader.start()
        assert sorted(r.value for r in await read_until(reader, 4)) == [b"old0", b"old1", b"old2", b"old3"]
        assert reader.assignment() == set(tps)
        assert await reader.committed(tps[0]) is None
        with pytest.raises(BrokerError, match="without a group cannot commit"):
            await reader.commit({tps[0]: 1})
        await reader.close()

        tail = broker.consumer(None, [topic], from_beginning=False)
        await tail.start()
        for tp in tps:  # positions resolve to the end before anything new is written
            assert await tail.position(tp) == 2
        producer.send(OutRecord(topic, 1, None, b"new", 2))
        await producer.flush()
        assert [r.value for r in await read_until(tail, 1)] == [b"new"]
        await tail.close()
        await producer.close()

    with_broker(kafka_bootstrap, body)


@pytest.mark.kafka
def test_send_to_a_partition_the_topic_lacks_fails_at_flush(kafka_bootstrap: str) -> None:
    topic = unique("narrow")

    async def body(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 1)])
        producer = broker.producer()
        await producer.start()
        producer.send(OutRecord(topic, 0, b"k", b"fine", 1))
        producer.send(OutRecord(topic, 5, b"k", b"v", 1))
        with pytest.raises(BrokerError, match=f"cannot write to partition 5 of '{topic}' on kafka "
                                              f"at .*: it has 1 partition"):
            await producer.flush()
        # A failed producer refuses further use: nothing may be committed after the loss.
        with pytest.raises(BrokerError, match="cannot write to partition 5"):
            producer.send(OutRecord(topic, 0, b"k", b"later", 2))
        with pytest.raises(BrokerError, match="cannot write to partition 5"):
            await producer.flush()
        await producer.close()

    with_broker(kafka_bootstrap, body)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_bootstrap_fails_clearly_after_the_connect_timeout() -> None:
    """The error names the address and the timeout the user gave (how long it takes is the
    connect timeout's: no wall-clock assertion here)."""
    address = f"127.0.0.1:{closed_port()}"
    broker = KafkaBroker({"bootstrap_servers": address, "connect_timeout_s": 1.5})
    with pytest.raises(BrokerError) as caught:
        asyncio.run(broker.start())
    message = str(caught.value)
    assert message.startswith(f"cannot reach Kafka at {address} after 1.5 s")
    assert "edm dev kafka start" in message


@pytest.mark.parametrize("options, expected", [
    ({}, "needs bootstrap_servers"),
    ({"bootstrap_servers": "h:1", "bootstrap": "x"}, "unknown kafka broker option(s): bootstrap"),
    ({"bootstrap_servers": "h:1", "security": {"user": "u"}}, "unknown kafka security option(s): user"),
    ({"bootstrap_servers": "h:1", "security": {"protocol": "TLS"}}, "unknown kafka security protocol 'TLS'"),
])
def test_invalid_options_are_broker_errors(options: dict, expected: str) -> None:
    with pytest.raises(BrokerError) as caught:
        KafkaBroker(options)
    assert expected in str(caught.value)


def test_bootstrap_servers_accept_a_comma_list_or_a_list() -> None:
    assert KafkaBroker({"bootstrap_servers": "a:1, b:2"}).describe() == "kafka at a:1,b:2"
    assert KafkaBroker({"bootstrap_servers": ["a:1", "b:2"]}).bootstrap == ["a:1", "b:2"]


def assert_fails_leaving_nothing_open(body: Callable[[], Awaitable[None]], expected: str) -> None:
    """``body`` raises a BrokerError containing ``expected``, and every aiokafka client it opened
    was closed: the ResourceWarning (and the event loop report) of an unclosed one fail."""
    reports: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reports.append(context["message"]))
        with pytest.raises(BrokerError, match=expected):
            await body()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(main())
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] + reports
    assert not leaked, leaked


@pytest.mark.parametrize("client", ["reader", "group member", "producer"])
def test_a_client_that_cannot_connect_is_closed(client: str) -> None:
    broker = KafkaBroker({"bootstrap_servers": f"127.0.0.1:{closed_port()}"})
    make = {"reader": lambda: broker.consumer(None, ["t"]),
            "group member": lambda: broker.consumer("g", ["t"]),
            "producer": broker.producer}[client]
    assert_fails_leaving_nothing_open(lambda: make().start(), "failed")


@pytest.mark.kafka
def test_a_reader_of_a_missing_topic_is_closed(kafka_bootstrap: str) -> None:
    async def body() -> None:
        async with started(KafkaBroker({"bootstrap_servers": kafka_bootstrap})) as broker:
            await broker.consumer(None, [unique("missing")]).start()
    assert_fails_leaving_nothing_open(body, "cannot read missing topic")
