"""A count-per-user service run by real `edm run` subprocesses, for the reliability tests.

The topology counts events per key into the key-value store ``counts`` (changelogged) and
writes each new count to ``<name>-counts``. Inputs are ``EVENTS`` events over ``USERS`` keys
on ``PARTITIONS`` partitions; batches are small (``MAX_BATCH``) so a run has many batches and
a crash point can be hit at an exact batch. The store is read back with `edm state ... scan`
and compared with the count computed directly from the inputs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from helpers.topologies import write_service
from edm_runner.brokers.base import Broker, OutRecord, TopicSpec
from edm_runner.records.partitioner import default_partition

PARTITIONS = 2
USERS = 17
EVENTS = 400
MAX_BATCH = 20
# The minimum the broker allows (group.min.session.timeout.ms): a SIGKILLed member is evicted
# quickly, so the restarted runner gets its partitions within seconds.
RUN_TIMEOUT_S = 120
# R's restore log line: "restored <store> task <sub>_<partition>: <N> records from offset <A> to <B>"
_RESTORED = re.compile(r"restored (\S+) task (\d+_\d+): (\d+) records? from offset (\d+) to (\d+)")


def write_topology(directory: Path, name: str, kafka_bootstrap: str | None = None, *,
                   processing: dict | None = None) -> Path:
    """The count-per-user microservice ``name``; on Kafka when ``kafka_bootstrap`` is given,
    else on a local broker in ``directory / "broker"``. ``processing`` entries replace the
    defaults (small batches, a commit after every batch)."""
    settings = json.dumps({"max_batch": MAX_BATCH, "commit_interval_ms": 1, **(processing or {})})
    return write_service(directory, name, kafka_bootstrap, f"""\
streams:
  events: {{topic: {name}-events, partitions: {PARTITIONS}, key: string, value: json}}
  counts: {{topic: {name}-counts, partitions: {PARTITIONS}, type: entity, key: string, value: json}}
stores:
  counts: {{type: key_value}}
pipelines:
  count:
    from: events
    steps:
      - group_by_key: {{}}
      - count: {{store: counts}}
    to: counts
""", processing=settings)


def events(count: int = EVENTS, first: int = 0) -> list[tuple[str, dict]]:
    """Deterministic (key, value) inputs with uneven key frequencies."""
    return [(f"user-{(i * i + 7 * i) % USERS:02d}", {"n": i}) for i in range(first, first + count)]


def reference_counts(inputs: list[tuple[str, dict]]) -> dict[str, int]:
    return dict(Counter(key for key, _ in inputs))


async def produce(broker: Broker, name: str, inputs: list[tuple[str, dict]]) -> None:
    """Writes ``inputs`` to ``<name>-events`` (created if missing), murmur2-partitioned."""
    topic = f"{name}-events"
    await broker.ensure_topics([TopicSpec(topic, PARTITIONS)])
    producer = broker.producer()
    await producer.start()
    try:
        for key, value in inputs:
            raw = key.encode()
            producer.send(OutRecord(topic, default_partition(raw, PARTITIONS), raw,
                                    json.dumps(value).encode(), 0))
        await producer.flush()
    finally:
        await producer.close()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.code == -9

    def restored(self) -> dict[str, int]:
        """Records restored per task (``"sub_partition"``) of the ``counts`` store, from the
        runtime's restore log lines; tasks that restored nothing are left out."""
        restored: dict[str, int] = {}
        for m in _RESTORED.finditer(self.stderr):
            if m.group(1) == "counts" and int(m.group(3)):
                restored[m.group(2)] = restored.get(m.group(2), 0) + int(m.group(3))
        return restored


def edm(*args: str | Path, crash_at: str | None = None, timeout: float = RUN_TIMEOUT_S) -> Run:
    """The real CLI in a subprocess; ``crash_at`` sets EDM_CRASH_AT (the runtime SIGKILLs
    itself there, see edm_runner/faults.py)."""
    env = {k: v for k, v in os.environ.items() if k != "EDM_CRASH_AT"}
    if crash_at is not None:
        env["EDM_CRASH_AT"] = crash_at
    proc = subprocess.run([sys.executable, "-m", "edm_runner", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_until_idle(topology: Path, state_dir: Path, crash_at: str | None = None) -> Run:
    return edm("run", topology, "--until-idle", "--state-dir", state_dir, crash_at=crash_at)


def scan(topology: Path, state_dir: Path, store: str = "counts") -> dict[str, int]:
    """The store's contents through `edm state FILE scan STORE`, key -> value."""
    result = edm("state", topology, "scan", store, "--state-dir", state_dir)
    assert result.code == 0, f"edm state scan exited {result.code}\n{result.stderr}"
    entries = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    table = {e["key"]: e["value"] for e in entries}
    assert len(table) == len(entries), f"a key is in two tasks: {entries}"
    return table


def checkpoints(topology: Path, state_dir: Path) -> dict[str, dict]:
    """Per task, its checkpoint (``{"changelogs": {"topic:p": offset}, "inputs": {...}}``)
    from `edm state FILE stats`."""
    result = edm("state", topology, "stats", "--state-dir", state_dir)
    assert result.code == 0, f"edm state stats exited {result.code}\n{result.stderr}"
    return {t["task"]: t["checkpoint"] for t in json.loads(result.stdout)["tasks"]}
