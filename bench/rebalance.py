"""Benchmark: failover of a stateful service with and without a standby, on a real Kafka broker.

A count-per-key service (4 partitions, one changelogged store) holds ``keys`` keys of state,
written straight into its changelog. Two `edm run` instances share its tasks (each restores its
half); with ``standby_replicas: 1`` each also keeps the other's tasks warm. Then one instance is
stopped (SIGTERM) and the clock runs until the survivor processes again on every partition: a
probe event per partition, written right after the stop, reaches the output. Without a standby the
survivor restores the stopped instance's half of the changelog first; with one it replays only
the delta past its standby checkpoint.

Prints one JSON line per mode, then a summary with ``ratio`` = no-standby seconds / standby
seconds. The broker is EDM_KAFKA_BOOTSTRAP when set, else a dev broker started for the run.
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import kafka_bootstrap
from bench.kafka_restore import PARTITIONS, fill_changelog
from edm_runner.brokers.base import OutRecord, TopicPartition
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.state.offline import checkpointed_offsets

KEYS = 1_000_000
CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
TIMEOUT_S = 600.0
POLL_S = 0.1  # other processes' logs and state have no event to await: they are polled


def _write_topology(directory: Path, name: str, bootstrap: str, standby: bool) -> Path:
    broker = json.dumps({"kind": "kafka", "bootstrap_servers": bootstrap, "consumer": CONSUMER})
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
kind: microservice
name: {name}
broker: {broker}
processing: {{commit_interval_ms: 100, standby_replicas: {1 if standby else 0}}}
streams:
  in: {{topic: {name}-events, partitions: {PARTITIONS}, key: string, value: json}}
  out: {{topic: {name}-counts, partitions: {PARTITIONS}, key: string, value: json, type: entity}}
stores:
  counts: {{type: key_value}}
pipelines:
  count:
    from: in
    steps:
      - group_by_key: {{}}
      - count: {{store: counts}}
    to: out
""")
    return path


async def _fill(broker: KafkaBroker, name: str, keys: int) -> dict[TopicPartition, int]:
    """The service's topics, and ``keys`` changelog records; returns the changelog's ends."""
    changelog = await fill_changelog(broker, name, keys)
    reader = broker.consumer(None, [changelog])
    await reader.start()
    try:
        return await reader.end_offsets(sorted(reader.assignment()))
    finally:
        await reader.close()


class _Instance:
    def __init__(self, topology: Path, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.log = state_dir.with_suffix(".log")
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology),
                                          "--state-dir", str(state_dir)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def assignments(self) -> list[dict]:
        return [json.loads(line.split("assignment ", 1)[1])
                for line in self.log.read_text(errors="replace").splitlines() if "assignment {" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def _until(condition, what: str, instances: list[_Instance]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        for i in instances:
            if i.proc.poll() is not None:
                raise RuntimeError(f"an instance died while waiting for {what}:\n"
                                   f"{i.log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


def _probes() -> dict[int, str]:
    """One key per partition."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < PARTITIONS:
        key = f"probe-{n}"
        found.setdefault(default_partition(key.encode(), PARTITIONS), key)
        n += 1
    return found


async def _scenario(bootstrap: str, keys: int, standby: bool, directory: Path) -> dict:
    name = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker({"bootstrap_servers": bootstrap})
    await broker.start()
    instances: list[_Instance] = []
    try:
        ends = await _fill(broker, name, keys)
        topology = _write_topology(directory, name, bootstrap, standby)
        # The leaving instance first, alone: it restores every task; then the survivor joins and
        # takes half of them (restoring them), the standbys of the other half with a standby.
        instances = [_Instance(topology, directory / f"{name}-a")]

        def settled() -> bool:
            last = [i.assignments()[-1] for i in instances if i.assignments()]
            return len(last) == 2 and all(len(a["active"]) == PARTITIONS // 2 for a in last) and \
                all(len(a["standby"]) == (PARTITIONS // 2 if standby else 0) for a in last)

        def warm() -> bool:
            """Every task's state checkpointed to the changelog's end on the instances holding it."""
            local = [checkpointed_offsets(i.state_dir, name) for i in instances]
            needed = []
            for inst, offsets in zip(instances, local):
                a = inst.assignments()[-1]
                needed += [offsets.get(tuple(map(int, t.split("_"))), -1) >= ends[TopicPartition(
                    f"{name}-counts-changelog", int(t.split("_")[1]))] for t in a["active"] + a["standby"]]
            return all(needed)

        await _until(lambda: bool(instances[0].assignments()) and warm(), "the first instance restored",
                     instances)
        instances.append(_Instance(topology, directory / f"{name}-b"))
        leaving, survivor = instances
        await _until(settled, "both instances assigned", instances)
        await _until(warm, "every task and standby restored", instances)
        task_moving = leaving.assignments()[-1]["active"]
        log_before = len(survivor.log.read_text(errors="replace"))
        started = time.perf_counter()
        leaving.stop()
        producer = broker.producer()
        await producer.start()
        probes = _probes()
        for partition, key in probes.items():
            producer.send(OutRecord(f"{name}-events", partition, key.encode(), b"{}", int(time.time() * 1000)))
        await producer.flush()
        await producer.close()
        reader = broker.consumer(None, [f"{name}-counts"])
        await reader.start()
        seen: set[str] = set()
        try:
            while len(seen) < len(probes):
                if time.perf_counter() - started > TIMEOUT_S:
                    raise RuntimeError("the survivor did not process every partition in time")
                for records in (await reader.getmany(timeout_ms=100, max_records=10_000)).values():
                    seen.update(r.key.decode() for r in records if r.key and r.key.startswith(b"probe-"))
        finally:
            await reader.close()
        seconds = time.perf_counter() - started
        restored = sum(int(line.split(": ", 2)[2].split(" records")[0])
                       for line in survivor.log.read_text(errors="replace")[log_before:].splitlines()
                       if "restored counts task" in line and any(f"task {t}:" in line for t in task_moving))
        return {"standby_replicas": 1 if standby else 0, "keys": keys, "partitions": PARTITIONS,
                "seconds": round(seconds, 3), "moved_tasks": task_moving,
                "restored_after_the_stop": restored}
    finally:
        for i in instances:
            i.stop()
        await broker.close()


def _run(bootstrap: str, keys: int) -> dict:
    results = {}
    for standby in (True, False):
        with tempfile.TemporaryDirectory(prefix="edm-bench-rebalance-") as tmp:
            results[standby] = asyncio.run(_scenario(bootstrap, keys, standby, Path(tmp)))
        print(json.dumps({"scenario": "rebalance", **results[standby]}), flush=True)
    return {"keys": keys, "standby_seconds": results[True]["seconds"],
            "no_standby_seconds": results[False]["seconds"],
            "ratio": round(results[False]["seconds"] / results[True]["seconds"], 3)}


def run(keys: int = KEYS) -> dict:
    with kafka_bootstrap() as bootstrap:
        return _run(bootstrap, keys)


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) == 2 else KEYS)))
