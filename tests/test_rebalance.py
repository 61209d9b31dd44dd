"""Rebalancing a stateful service across real `edm run` processes on a real Kafka broker.

Three instances count events per key from a 6-partition input (6 tasks); a fourth joins and
one is stopped with SIGTERM while events flow. Clean rebalances (revocation: finish the batch,
flush, commit, checkpoint, close) lose nothing and duplicate nothing, so every key's final
count equals its number of inputs; at the end every task is active on exactly one instance.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.base import OutRecord
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.records.partitioner import default_partition
from tests.helpers.kafka_flow import Runner
from tests.helpers.topologies import write_service
from helpers.brokers import started

pytestmark = pytest.mark.kafka

PARTITIONS = 6
KEYS = 60
TASKS = {f"0_{p}" for p in range(PARTITIONS)}
LOG_POLL_S = 0.1  # another process's log file has no event to await: it is polled


def write_topology(directory: Path, name: str, bootstrap: str, *, partitions: int = PARTITIONS,
                   processing: str = "{commit_interval_ms: 50}") -> Path:
    return write_service(directory, name, bootstrap, f"""\
streams:
  in: {{topic: {name}-in, partitions: {partitions}, key: string, value: json}}
  out: {{topic: {name}-out, partitions: {partitions}, key: string, value: json, type: entity}}
stores:
  counts: {{type: key_value}}
pipelines:
  count:
    from: in
    steps:
      - group_by_key: {{}}
      - count: {{store: counts}}
    to: out
""", processing=processing)


def start(topology: Path, instance: str) -> Runner:
    return Runner(topology, "--state-dir", str(topology.parent / instance))


def assignments(runner: Runner) -> list[dict]:
    """The runner's ``edm.assignment`` log lines, oldest first."""
    return [json.loads(line.split("assignment ", 1)[1]) for line in runner.stderr().splitlines()
            if "assignment {" in line]


async def wait_log(runner: Runner, predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate(runner):
        assert runner.alive(), f"{what}: the runner died:\n{runner.stderr()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s:\n{runner.stderr()[-3000:]}"
        await asyncio.sleep(LOG_POLL_S)


class Counts:
    """Reads ``<name>-out`` without a group: the latest count per key."""

    def __init__(self, broker: KafkaBroker, name: str) -> None:
        self.broker, self.topic = broker, f"{name}-out"
        self.latest: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async with started(self.broker.consumer(None, [self.topic])) as consumer:
            while True:
                for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    for r in records:
                        self.latest[r.key.decode()] = json.loads(r.value)
                    self.changed.set()

    async def wait_for(self, expected: dict[str, int], timeout_s: float, runners: list[Runner], *,
                       exact: bool = True) -> None:
        """Until every key's count equals ``expected`` (``exact`` False: at least it, as after
        a SIGKILL, when the uncommitted tail of the input is counted again)."""
        deadline = time.monotonic() + timeout_s
        while behind := {k: (self.latest.get(k), n) for k, n in expected.items()
                         if (self.latest.get(k) != n if exact else self.latest.get(k, 0) < n)}:
            remaining = deadline - time.monotonic()
            assert remaining > 0, (f"counts (got, expected) still differ after {timeout_s:g} s: "
                                   f"{dict(list(behind.items())[:10])}; logs:\n"
                                   + "\n---\n".join(r.stderr()[-2000:] for r in runners))
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


async def feed(broker: KafkaBroker, name: str, start: int, count: int, sent: dict[str, int], *,
               keys: int = KEYS, partitions: int = PARTITIONS) -> None:
    async with started(broker.producer()) as producer:
        for n in range(start, start + count):
            key = f"k{n % keys}"
            producer.send(OutRecord(f"{name}-in", default_partition(key.encode(), partitions), key.encode(),
                                    json.dumps({"n": n}).encode(), int(time.time() * 1000)))
            sent[key] = sent.get(key, 0) + 1
        await producer.flush()


def test_scale_out_and_in_loses_nothing(tmp_path: Path, kafka_bootstrap: str) -> None:
    name = f"rebal-{uuid.uuid4().hex[:8]}"
    topology = write_topology(tmp_path, name, kafka_bootstrap)
    runners = [start(topology, f"i{i}") for i in range(3)]

    async def scenario() -> None:
        broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
        await broker.start()
        counts = Counts(broker, name)
        sent: dict[str, int] = {}
        try:
            for r in runners:  # all three share the six tasks before events flow
                await wait_log(r, lambda r: any(a["active"] for a in assignments(r)), "first assignment")
            reader = asyncio.create_task(counts.run())
            await feed(broker, name, 0, 1500, sent)
            await counts.wait_for(sent, 60, runners)

            fourth = start(topology, "i3")
            runners.append(fourth)
            feeding = asyncio.create_task(feed(broker, name, 1500, 1500, sent))
            await wait_log(fourth, lambda r: any(a["active"] for a in assignments(r)), "the fourth's tasks")
            await feeding
            await counts.wait_for(sent, 60, runners)

            leaving = runners.pop(0)
            feeding = asyncio.create_task(feed(broker, name, 3000, 1500, sent))
            assert leaving.stop(timeout_s=30) == 0, leaving.stderr()[-3000:]
            await feeding
            await counts.wait_for(sent, 60, runners)
            # The rebalances went through the listener: revoked, committed, closed, restored.
            assert "committed and closed" in runners[0].stderr(), runners[0].stderr()[-3000:]

            # Every task active exactly once among the live instances, all on one generation.
            def settled(_: Runner) -> bool:
                last = [assignments(r)[-1] for r in runners]
                active = [t for a in last for t in a["active"]]
                return sorted(active) == sorted(TASKS)
            await wait_log(runners[0], settled, "a settled assignment")
            last = [assignments(r)[-1] for r in runners]
            active = [t for a in last for t in a["active"]]
            assert len(active) == len(set(active)) == PARTITIONS
            assert all(a["active"] for a in last), last  # 6 tasks over 3 instances: none idle
            reader.cancel()
        finally:
            await broker.close()

    try:
        asyncio.run(scenario())
    finally:
        for r in runners:
            r.stop(timeout_s=30)
