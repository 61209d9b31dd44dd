"""The dev broker (edm_runner.devkafka) and a producer riding out a broker restart."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edm_runner import devkafka
from edm_runner.brokers.base import OutRecord, Record, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from test_kafka_broker import read_until, unique
from helpers.brokers import run_on


@pytest.mark.kafka
def test_start_is_idempotent_and_status_reports_the_running_broker(
        kafka_dev: devkafka.KafkaInfo | None) -> None:
    if kafka_dev is None:
        pytest.skip("EDM_KAFKA_BOOTSTRAP names an external broker; no dev broker to inspect")
    again = devkafka.start(kafka_dev.workdir)
    assert again == kafka_dev
    assert devkafka.status(kafka_dev.workdir) == kafka_dev
    assert kafka_dev.log_file.stat().st_size > 0  # the broker logs to its file, not stdout
    assert "Kafka Server started" in kafka_dev.log_file.read_text()


def test_status_and_stop_of_an_empty_workdir(tmp_path: Path) -> None:
    assert devkafka.status(tmp_path) is None
    assert devkafka.stop(tmp_path) is False


@pytest.mark.kafka
def test_a_broker_that_dies_at_startup_is_reported_with_its_log(
        tmp_path: Path, kafka_tools: None) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("version=1\nnode.id=99\ncluster.id=broken\n")
    with pytest.raises(devkafka.DevKafkaError) as caught:
        devkafka.start(tmp_path, timeout_s=60)
    message = str(caught.value)
    assert "exited during startup" in message
    assert "--- " + str(tmp_path) in message  # the log tail follows
    assert devkafka.status(tmp_path) is None


@pytest.mark.kafka
def test_records_sent_while_the_broker_restarts_are_delivered_once(
        tmp_path: Path, kafka_tools: None) -> None:
    """Stop the broker mid-stream, keep sending, bring it back: flush succeeds late, and the
    topic holds every record exactly once, in order (idempotent producer, acks=all)."""
    info = devkafka.start(tmp_path)
    topic = unique("restart")

    async def scenario() -> list[Record]:
        broker = KafkaBroker({"bootstrap_servers": info.bootstrap})
        await broker.start()
        await broker.ensure_topics([TopicSpec(topic, 1)])
        producer = broker.producer()
        await producer.start()
        for i in range(100):
            producer.send(OutRecord(topic, 0, b"k", b"%d" % i, i))
        await producer.flush()

        await asyncio.to_thread(devkafka.stop, tmp_path)
        for i in range(100, 200):
            producer.send(OutRecord(topic, 0, b"k", b"%d" % i, i))
        flushing = asyncio.ensure_future(producer.flush())
        restarted = await asyncio.to_thread(devkafka.start, tmp_path)
        assert restarted.bootstrap == info.bootstrap  # same address: clients reconnect
        await flushing
        await producer.close()

        consumer = broker.consumer(None, [topic])
        await consumer.start()
        records = await read_until(consumer, 200)
        extra = await consumer.getmany(timeout_ms=500, max_records=10)
        await consumer.close()
        await broker.close()
        assert extra == {}
        return records

    try:
        records = asyncio.run(scenario())
    finally:
        devkafka.stop(tmp_path)
    assert [r.value for r in records] == [b"%d" % i for i in range(200)]


@pytest.mark.kafka
def test_a_cluster_replicates_and_start_brings_back_a_stopped_node(kafka_cluster: devkafka.KafkaInfo) -> None:
    """Three nodes: topics edm creates get three replicas; a node stopped alone (SIGKILL) is
    started again by ``start`` while the others keep running; the size is fixed per workdir."""
    workdir = kafka_cluster.workdir
    before = devkafka.status(workdir)  # other tests may have restarted a node: new PIDs
    assert before is not None and [n.node_id for n in before.nodes] == [1, 2, 3]
    assert before.bootstrap == kafka_cluster.bootstrap == ",".join(n.address for n in before.nodes)
    topic = unique("replicated")

    async def replicas(broker) -> list[int]:
        await broker.ensure_topics([TopicSpec(topic, 2)])
        [described] = await broker._describe_topics([topic])
        return [len(p["replicas"]) for p in described["partitions"]]

    assert run_on(KafkaBroker({"bootstrap_servers": kafka_cluster.bootstrap}), replicas) == [3, 3]
    assert devkafka.stop(workdir, node=2, kill=True) is True
    assert devkafka.status(workdir) is None  # not every node runs
    restarted = devkafka.start(workdir)
    assert restarted.node(1) == before.node(1) and restarted.node(3) == before.node(3)
    assert restarted.node(2).pid != before.node(2).pid
    assert restarted.node(2).port == before.node(2).port
    assert devkafka.status(workdir) == restarted
    with pytest.raises(devkafka.DevKafkaError, match="has 3 node"):
        devkafka.start(workdir, nodes=1)


@pytest.mark.kafka
def test_status_and_stop_find_the_default_broker_from_any_directory(kafka_tools: None, tmp_path: Path) -> None:
    """The default workdir was `.edm/kafka` under the current directory: `edm dev kafka stop`
    run elsewhere said "kafka not running" and left the broker running. It is one well-known
    place now ($XDG_STATE_HOME/edm/kafka here)."""
    import os

    from cli_helpers import edm

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    workdir = tmp_path / "state" / "edm" / "kafka"
    try:
        started_ = edm("dev", "kafka", "start", cwd=here, env=env, timeout=300)
        assert started_.code == 0, started_.stderr
        bootstrap = started_.stdout.strip()
        status = edm("dev", "kafka", "status", cwd=elsewhere, env=env)
        assert status.code == 0 and status.stdout.strip() == bootstrap, status.stderr
        stopped = edm("dev", "kafka", "stop", cwd=elsewhere, env=env)
        assert "kafka stopped" in stopped.stderr
        after = edm("dev", "kafka", "status", cwd=here, env=env)
        assert after.code == 1 and f"kafka not running in {workdir}" in after.stderr
    finally:
        devkafka.stop(workdir)
        devkafka.stop(here / ".edm" / "kafka")
