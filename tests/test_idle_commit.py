"""A running service commits its last batches on the commit interval although no more input
arrives: the group's committed offsets reach the input's end offsets and every store update
is in the changelog while the service still runs, under every guarantee and on both brokers.

Before, at-least-once committed only when a batch was processed, so after the input went
idle the last batches stayed uncommitted until new input arrived (lag never cleared, standbys
stayed behind, a crash in the quiet period re-emitted output).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from edm_runner.brokers.base import Broker, TopicPartition
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.runtime import run_services
from edm_runner.language import load_file
from helpers.reliability_flow import PARTITIONS, events, produce, reference_counts, write_topology
from helpers.brokers import started

# Long enough that the last of the back-to-back batches always falls inside the interval
# that an earlier batch's commit started (the case that was never committed).
COMMIT_INTERVAL_MS = 1000
DEADLINE_S = 60.0


async def until(what: str, check: Callable[[], Awaitable[tuple[bool, object]]],
                running: asyncio.Task) -> None:
    """Polls ``check`` (it returns (done, what to show on failure)) until done, failing after
    ``DEADLINE_S`` or as soon as ``running`` (the service) ended."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        done, state = await check()
        if done:
            return
        if running.done():
            running.result()  # raises the service's error
            pytest.fail(f"the service stopped before {what}; last seen: {state}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached {DEADLINE_S:g} s after the input went idle; last seen: {state}")
        await asyncio.sleep(0.1)  # the broker's offsets are polled: there is no event to await


async def end_offsets(broker: Broker, topic: str) -> dict[TopicPartition, int]:
    async with started(broker.consumer(None, [topic])) as reader:
        return await reader.end_offsets(sorted(reader.assignment()))


async def latest_values(broker: Broker, topic: str) -> dict[str, int]:
    """The last value per key of ``topic`` (a changelog: JSON keys and values)."""
    async with started(broker.consumer(None, [topic])) as reader:
        ends = await reader.end_offsets(sorted(reader.assignment()))
        latest: dict[str, int] = {}
        while any([await reader.position(tp) < end for tp, end in ends.items()]):
            for records in (await reader.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    latest[json.loads(r.key)] = json.loads(r.value)
        return latest


async def idle_commit_scenario(broker: Broker, tmp_path: Path, name: str, kafka_bootstrap: str | None,
                               guarantee: str) -> None:
    topology = load_file(write_topology(tmp_path, name, kafka_bootstrap, processing={
        "guarantee": guarantee, "commit_interval_ms": COMMIT_INTERVAL_MS}))
    inputs = events()
    expected = reference_counts(inputs)
    await broker.start()
    stop = asyncio.Event()
    running: asyncio.Task | None = None
    try:
        await produce(broker, name, inputs)
        ends = await end_offsets(broker, f"{name}-events")
        assert sum(ends.values()) == len(inputs) and len(ends) == PARTITIONS
        running = asyncio.create_task(run_services([topology], broker, stop=stop, state_dir=tmp_path / "state"))

        async def committed() -> tuple[bool, object]:
            offsets = await broker.group_offsets(name, [f"{name}-events"])
            return offsets == ends, {"committed": offsets, "ends": ends}

        async def changelog() -> tuple[bool, object]:
            latest = await latest_values(broker, f"{name}-counts-changelog")
            behind = {k: (latest.get(k), n) for k, n in expected.items() if latest.get(k) != n}
            return not behind, {"key: (changelog, expected)": behind}

        await until("the committed offsets reaching the end offsets", committed, running)
        await until("a complete changelog", changelog, running)
        assert not running.done(), "the service must still be running"
    finally:
        stop.set()
        if running is not None:
            await running
        await broker.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_an_idle_service_has_committed_everything_on_the_embedded_broker(tmp_path: Path) -> None:
    asyncio.run(idle_commit_scenario(LocalBroker(tmp_path / "broker"), tmp_path, unique("idle"), None,
                                     "at_least_once"))


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_an_idle_service_commits_its_last_batches_on_kafka(tmp_path: Path, kafka_bootstrap: str,
                                                           guarantee: str) -> None:
    asyncio.run(idle_commit_scenario(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), tmp_path,
                                     unique("idle"), kafka_bootstrap, guarantee))
