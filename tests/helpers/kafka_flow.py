"""A numbered event flow through a real `edm run` subprocess, for the fault tests.

The topology copies ``{"n": i}`` from ``<name>-in`` to ``<name>-out`` (3 partitions each).
The test feeds inputs 0..N-1 continuously, breaks something (the runner, the broker) while
they flow, and checks with an ``OutputReader`` that every input reached the output.
Works on both brokers through the broker protocol; the local broker directory is shared
with the runner process (the local broker supports several processes).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from edm_runner.brokers.base import Broker, OutRecord, TopicSpec
from edm_runner.records.partitioner import default_partition
from helpers.topologies import write_service

PARTITIONS = 3


def write_topology(directory: Path, name: str, kafka_bootstrap: str | None) -> Path:
    """A pass-through microservice ``name``; on Kafka when ``kafka_bootstrap`` is given."""
    return write_service(directory, name, kafka_bootstrap, f"""\
streams:
  in: {{topic: {name}-in, partitions: {PARTITIONS}, key: string, value: json}}
  out: {{topic: {name}-out, partitions: {PARTITIONS}, key: string, value: json}}
pipelines:
  copy:
    from: in
    steps:
      - map_values: "{{'n': value.n}}"
    to: out
""")


def topics(name: str) -> list[TopicSpec]:
    return [TopicSpec(f"{name}-in", PARTITIONS), TopicSpec(f"{name}-out", PARTITIONS)]


class Runner:
    """``edm run FILE`` in a subprocess; stderr goes to a file (a full pipe would block it)."""

    _started = itertools.count(1)

    def __init__(self, topology: Path, *args: str) -> None:
        self.log = topology.parent / f"{topology.stem}-run{next(self._started)}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edm_runner", "run", str(topology), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (a clean stop: finish the batch, flush, commit) and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the runner ignored SIGTERM for {timeout_s} s:\n{self.stderr()}") from None


class Feeder:
    """Produces inputs ``{"n": i}`` for i in 0..total-1, ``per_tick`` of them every
    ``tick_s`` (a steady input rate, so faults land mid-stream); each tick is flushed, so
    ``produced`` counts durable inputs."""

    def __init__(self, broker: Broker, name: str, total: int, per_tick: int = 50,
                 tick_s: float = 0.05) -> None:
        self.broker, self.topic = broker, f"{name}-in"
        self.total, self.per_tick, self.tick_s = total, per_tick, tick_s
        self.produced = 0

    async def run(self) -> None:
        producer = self.broker.producer()
        await producer.start()
        try:
            for n in range(self.total):
                key = f"k{n % 97}".encode()
                producer.send(OutRecord(self.topic, default_partition(key, PARTITIONS), key,
                                        json.dumps({"n": n}).encode(), int(time.time() * 1000)))
                if (n + 1) % self.per_tick == 0 or n + 1 == self.total:
                    await producer.flush()
                    self.produced = n + 1
                    await asyncio.sleep(self.tick_s)  # the input rate, not synchronization
        finally:
            await producer.close()


class OutputReader:
    """Reads ``<name>-out`` from the beginning without a group, counting every ``n`` seen."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker, self.topic = broker, f"{name}-out"
        self.seen: Counter[int] = Counter()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        consumer = self.broker.consumer(None, [self.topic])
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    for record in records:
                        self.seen[json.loads(record.value)["n"]] += 1
                    self._changed.set()
        finally:
            await consumer.close()

    async def wait_for(self, distinct: int, timeout_s: float, what: str, runner: Runner) -> None:
        """Until ``distinct`` different inputs reached the output; fails after ``timeout_s``
        showing the end of the ``runner``'s log."""
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < distinct:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: {len(self.seen)} of {distinct} inputs in the output " \
                                  f"after {timeout_s:g} s; the runner's log ends with:\n" + \
                                  "\n".join(runner.stderr().splitlines()[-30:])
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def report(self, total: int) -> tuple[list[int], dict[int, int]]:
        """(inputs missing from the output, input -> copies for the duplicated ones)."""
        missing = [n for n in range(total) if n not in self.seen]
        duplicates = {n: c for n, c in sorted(self.seen.items()) if c > 1}
        return missing, duplicates
