"""Kill loop on a real Kafka broker: two `edm run` instances of a stateful service share the
input while inputs flow; every few seconds one of them, chosen at random, is SIGKILLed and
restarted at once (its partitions move and come back through rebalances).

- at-least-once: every input reaches the output (nothing missing).
- exactly-once: the read-committed output holds every input exactly once, and the store,
  restored on one instance's state directory and read with `edm state scan`, equals the
  reference computed from the inputs.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.kafka_eos import read_committed
from helpers import eos_flow
from helpers.kafka_flow import Runner
from helpers.reliability_flow import run_until_idle, scan
from helpers.brokers import started

EVENTS = 100_000
FEED_S = 20.0          # inputs are spread over this long, so the kills land mid-stream
KILL_EVERY_S = (3.0, 5.0)
DRAIN_TIMEOUT_S = 120.0


class Outputs:
    """Tails ``<name>-totals`` (read committed, or everything) and counts each input seen."""

    def __init__(self, broker: KafkaBroker, name: str, committed: bool) -> None:
        self.broker = read_committed(broker) if committed else broker
        self.topic = f"{name}-totals"
        self.seen: Counter[int] = Counter()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async with started(self.broker.consumer(None, [self.topic])) as consumer:
            while True:
                for records in (await consumer.getmany(timeout_ms=200, max_records=20_000)).values():
                    self.seen.update(json.loads(r.value)["last"] for r in records)
                    self.changed.set()

    async def wait_for_all(self, total: int, timeout_s: float, runners: list[Runner]) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < total:
            remaining = deadline - time.monotonic()
            assert remaining > 0, (f"{len(self.seen)} of {total} inputs in the output after the kill "
                                   "loop; the runners' logs end with:\n" +
                                   "\n".join("\n".join(r.stderr().splitlines()[-15:]) for r in runners))
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


async def _feed(broker: KafkaBroker, name: str) -> None:
    """Inputs 0..EVENTS-1 in 40 slices, at a steady rate over ``FEED_S``."""
    slices = 40
    step = EVENTS // slices
    for i in range(slices):
        await eos_flow.produce(broker, name, i * step, step if i < slices - 1 else EVENTS - i * step)
        await asyncio.sleep(FEED_S / slices)  # the input rate, not synchronization


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill_loop(guarantee: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    name = f"kill-{guarantee[:3]}-{uuid.uuid4().hex[:6]}"
    topology = eos_flow.write_topology(tmp_path, name, kafka_bootstrap, guarantee, max_batch=1000)
    state_dirs = [tmp_path / "state-a", tmp_path / "state-b"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = 0

    async def scenario() -> Counter[int]:
        nonlocal kills
        broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
        await broker.start()
        await eos_flow.produce(broker, name, 0, 0)  # the topics, before the runners start
        runners = [Runner(topology, "--state-dir", str(d)) for d in state_dirs]
        outputs = Outputs(broker, name, committed=guarantee == "exactly_once")
        reader = asyncio.create_task(outputs.run())
        try:
            feeder = asyncio.create_task(_feed(broker, name))
            while not feeder.done():
                await asyncio.wait([feeder], timeout=rng.uniform(*KILL_EVERY_S))
                if feeder.done():
                    break
                victim = rng.randrange(len(runners))
                assert runners[victim].alive(), runners[victim].stderr()
                runners[victim].kill()
                runners[victim] = Runner(topology, "--state-dir", str(state_dirs[victim]))
                kills += 1
            await feeder
            await outputs.wait_for_all(EVENTS, DRAIN_TIMEOUT_S, runners)
            for runner in runners:
                assert runner.stop() == 0, runner.stderr()
        finally:
            for runner in runners:
                if runner.alive():
                    runner.kill()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await broker.close()
        return outputs.seen

    seen = asyncio.run(scenario())
    assert kills >= 3, f"only {kills} kills (seed {seed})"
    missing = [n for n in range(EVENTS) if n not in seen]
    assert not missing, f"seed {seed}: {len(missing)} inputs missing, first {missing[:10]}"
    if guarantee == "at_least_once":
        return
    duplicated = {n: c for n, c in seen.items() if c > 1}
    assert not duplicated, f"seed {seed}: {len(duplicated)} inputs duplicated, e.g. {list(duplicated.items())[:5]}"
    # Everything is committed: one instance's state directory, restored, must hold the reference.
    final = run_until_idle(topology, state_dirs[0])
    assert final.code == 0, final.stderr
    assert scan(topology, state_dirs[0], "totals") == eos_flow.reference(EVENTS)
