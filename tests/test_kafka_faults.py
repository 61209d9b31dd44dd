"""Faults around a real `edm run` subprocess: the runner SIGKILLed mid-stream (on Kafka and
on the embedded broker), the Kafka broker stopped for 20 s mid-stream. (An unreachable broker
at start is tested in test_kafka_cli.)

Inputs flow continuously from the test while the fault happens; afterwards every input must
be in the output. Duplicates are allowed under at-least-once on Kafka (they are counted and
printed); on the embedded broker outputs and offsets commit in one LMDB transaction, so
there must be none.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from edm_runner import devkafka
from edm_runner.brokers.base import Broker
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from helpers.kafka_flow import Feeder, OutputReader, Runner, topics, write_topology

TOTAL = 4000
OUTAGE_S = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check_complete(reader: OutputReader, runner_logs: list[str]) -> dict[int, int]:
    """Every input is in the output and no runner printed a traceback; the duplicates."""
    missing, duplicates = reader.report(TOTAL)
    sample = dict(list(duplicates.items())[:10])
    print(f"{TOTAL} inputs, {sum(reader.seen.values())} outputs, "
          f"{len(duplicates)} duplicated input(s), e.g. (input: copies) {sample}")
    assert not missing, f"{len(missing)} input(s) missing from the output, e.g. {missing[:20]}"
    for log in runner_logs:
        assert "Traceback" not in log, log
    return duplicates


async def kill_and_restart(broker: Broker, topology: Path, name: str) -> dict[int, int]:
    """SIGKILL the runner once part of the inputs went through while more keep coming,
    restart it, and wait for every input in the output."""
    await broker.start()
    await broker.ensure_topics(topics(name))
    feeder, reader = Feeder(broker, name, TOTAL), OutputReader(broker, name)
    feeding = asyncio.create_task(feeder.run())
    reading = asyncio.create_task(reader.run())
    first = Runner(topology)
    second: Runner | None = None
    try:
        await reader.wait_for(TOTAL // 5, 60, "before the kill", first)
        first.kill()
        assert feeder.produced < TOTAL, "the feeder finished before the kill: not mid-stream"
        second = Runner(topology)
        await feeding
        await reader.wait_for(TOTAL, 60, "after the restart", second)
        assert await asyncio.to_thread(second.stop) == 0, second.stderr()
    finally:
        for task in (feeding, reading):
            task.cancel()
        await asyncio.gather(feeding, reading, return_exceptions=True)
        for runner in (first, second):
            if runner is not None and runner.alive():
                runner.kill()
        await broker.close()
    return check_complete(reader, [first.stderr(), second.stderr()])


@pytest.mark.kafka
def test_sigkill_mid_stream_then_restart_loses_nothing_on_kafka(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    name = unique("killed")
    topology = write_topology(tmp_path, name, kafka_bootstrap)
    asyncio.run(kill_and_restart(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), topology, name))


def test_sigkill_mid_stream_then_restart_loses_nothing_and_duplicates_nothing_locally(
        tmp_path: Path) -> None:
    name = unique("killed")
    topology = write_topology(tmp_path, name, None)
    duplicates = asyncio.run(kill_and_restart(LocalBroker(tmp_path / "broker"), topology, name))
    assert duplicates == {}, "outputs and offsets commit in one LMDB transaction"


@pytest.mark.kafka
def test_runner_waits_out_a_broker_outage_and_loses_nothing(tmp_path: Path, kafka_tools: None) -> None:
    """The dev broker is stopped for 20 s while inputs flow, then started again (same data,
    same port): the runner keeps running, resumes, and every input reaches the output."""
    workdir = tmp_path / "kafka"
    info = devkafka.start(workdir)
    name = unique("outage")
    topology = write_topology(tmp_path, name, info.bootstrap)

    async def scenario() -> dict[int, int]:
        broker = KafkaBroker({"bootstrap_servers": info.bootstrap})
        await broker.start()
        await broker.ensure_topics(topics(name))
        feeder, reader = Feeder(broker, name, TOTAL), OutputReader(broker, name)
        feeding = asyncio.create_task(feeder.run())
        reading = asyncio.create_task(reader.run())
        runner = Runner(topology)
        try:
            await reader.wait_for(TOTAL // 5, 60, "before the outage", runner)
            await asyncio.to_thread(devkafka.stop, workdir)
            assert feeder.produced < TOTAL, "the feeder finished before the outage: not mid-stream"
            await asyncio.sleep(OUTAGE_S)  # the outage itself: a deliberate duration
            assert runner.alive(), f"the runner died during the outage:\n{runner.stderr()}"
            await asyncio.to_thread(devkafka.start, workdir)
            await asyncio.wait_for(feeding, 90)
            await reader.wait_for(TOTAL, 90, "after the outage", runner)
            assert runner.alive(), f"the runner died after the outage:\n{runner.stderr()}"
            assert await asyncio.to_thread(runner.stop) == 0, runner.stderr()
        finally:
            for task in (feeding, reading):
                task.cancel()
            await asyncio.gather(feeding, reading, return_exceptions=True)
            if runner.alive():
                runner.kill()
            await broker.close()
        return check_complete(reader, [runner.stderr()])

    try:
        asyncio.run(scenario())
    finally:
        devkafka.stop(workdir)
