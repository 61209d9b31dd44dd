"""Hot replicas on a real Kafka broker with real `edm run` processes.

Two instances count per key on a 2-partition input with ``standby_replicas: 1``: each runs one
task and keeps the other's as a standby (never beside its active). When one is SIGKILLed, the
other is promoted and restores only the changelog delta past its standby checkpoint: fewer
records than the store holds (from the ``restored ...`` log lines). Nothing is missing after.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.kafka import KafkaBroker
from tests.test_rebalance import Counts, assignments, feed, wait_log, write_topology
from tests.helpers.kafka_flow import Runner

pytestmark = pytest.mark.kafka

PARTITIONS = 2
RESTORED = re.compile(r"restored counts task (\d+_\d+): (\d+) records")


def restored(runner: Runner, task: str) -> int:
    return sum(int(n) for t, n in RESTORED.findall(runner.stderr()) if t == task)


def test_failover_promotes_the_standby(tmp_path: Path, kafka_bootstrap: str) -> None:
    name = f"standby-{uuid.uuid4().hex[:8]}"
    topology = write_topology(tmp_path, name, kafka_bootstrap, partitions=PARTITIONS,
                              processing="{commit_interval_ms: 50, standby_replicas: 1}")
    runners = [Runner(topology, "--state-dir", str(tmp_path / f"i{i}")) for i in range(2)]

    def both_standing_by(_: Runner) -> bool:
        last = [assignments(r)[-1] for r in runners if assignments(r)]
        return len(last) == 2 and all(a["active"] and a["standby"] for a in last)

    async def scenario() -> None:
        broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
        await broker.start()
        counts = Counts(broker, name)
        reader: asyncio.Task[None] | None = None
        sent: dict[str, int] = {}
        try:
            await wait_log(runners[0], both_standing_by, "one active and one standby task each")
            reader = asyncio.create_task(counts.run())  # the output topic exists now
            last = [assignments(r)[-1] for r in runners]
            for a in last:
                assert not set(a["active"]) & set(a["standby"]), last
            assert last[0]["active"] == last[1]["standby"] and last[1]["active"] == last[0]["standby"], last

            keys = 2000
            await feed(broker, name, 0, keys, sent, keys=keys, partitions=PARTITIONS)
            await counts.wait_for(sent, 60, runners)
            survivor, victim = runners
            task = assignments(victim)[-1]["active"][0]
            store_size = sum(1 for k in sent if _partition(k) == int(task.split("_")[1]))
            before = restored(survivor, task)
            victim.kill()
            await feed(broker, name, keys, 200, sent, keys=keys, partitions=PARTITIONS)
            await wait_log(survivor, lambda r: task in assignments(r)[-1]["active"], "the promotion", 60)
            await counts.wait_for(sent, 60, [survivor], exact=False)
            delta = restored(survivor, task) - before
            assert f"standby task(s) {task}" in survivor.stderr()
            assert delta < store_size, (delta, store_size, survivor.stderr()[-3000:])
        finally:
            if reader is not None:
                reader.cancel()
            await broker.close()

    try:
        asyncio.run(scenario())
    finally:
        for r in runners:
            r.stop(timeout_s=30)


def _partition(key: str) -> int:
    from edm_runner.records.partitioner import default_partition
    return default_partition(key.encode(), PARTITIONS)
