"""Nothing blocks the event loop: every LMDB write of the local state (a batch's commit with its
fsync, a global table's bootstrap and tail, a task's open with its file-lock wait, its close) runs
in a worker thread, on both brokers.

The test records the thread of every call of those ``TaskState`` methods during a stateful run
with a global table that tails the service's own output, and fails if one ran on the thread of
the event loop. Before, ``TaskState.commit`` and the global table's open and tail ran on it.
"""
from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edm_runner.brokers.base import Broker, OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.runtime import run_services
from edm_runner.language import load_file
from edm_runner.state.task import TaskState
from helpers.brokers import started
from helpers.topologies import write_service

BLOCKING = ("open", "commit", "apply_changelog", "register", "close")


def _record_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Wraps the blocking ``TaskState`` methods; returns method -> the thread of each call."""
    seen: dict[str, list[int]] = {name: [] for name in BLOCKING}
    for name in BLOCKING:
        original = TaskState.__dict__[name]
        if isinstance(original, classmethod):
            def wrapper(cls: type, *args: Any, __f: Any = original.__func__, __n: str = name, **kw: Any) -> Any:
                seen[__n].append(threading.get_ident())
                return __f(cls, *args, **kw)
            monkeypatch.setattr(TaskState, name, classmethod(wrapper))
        else:
            def wrapper(self: TaskState, *args: Any, __f: Any = original, __n: str = name, **kw: Any) -> Any:
                seen[__n].append(threading.get_ident())
                return __f(self, *args, **kw)
            monkeypatch.setattr(TaskState, name, wrapper)
    return seen


async def _scenario(broker: Broker, tmp_path: Path, kafka_bootstrap: str | None) -> None:
    prefix = f"loop-{uuid.uuid4().hex[:8]}"
    path = write_service(tmp_path, "svc", kafka_bootstrap, f"""\
streams:
  clicks: {{topic: {prefix}-clicks, partitions: 2, key: string, value: json}}
  counts: {{topic: {prefix}-counts, partitions: 2, type: entity, key: string, value: json}}
  out: {{topic: {prefix}-out, partitions: 2, key: string, value: json}}
global_tables: {{latest: {{from: counts}}}}
stores:
  per-page: {{type: key_value}}
pipelines:
  count:
    from: clicks
    steps:
      - group_by: {{key: value.page, name: by-page}}
      - count: {{store: per-page}}
    to: counts
  enrich:
    from: clicks
    steps:
      - join: {{global_table: latest, key: value.page, kind: left, value: "[value, other]"}}
    to: out
""", processing="{commit_interval_ms: 50, max_batch: 50}")
    topology = load_file(path)
    await broker.ensure_topics([TopicSpec(f"{prefix}-clicks", 2), TopicSpec(f"{prefix}-counts", 2, compacted=True)])
    async with started(broker.producer()) as producer:
        # Records already in the global table's topic: its bootstrap applies them before
        # processing, so the run always writes a changelog batch into local state.
        for page in ("p0", "p1"):
            key = page.encode()
            producer.send(OutRecord(f"{prefix}-counts", default_partition(key, 2), key, b"0", 500))
        for i in range(400):
            key = f"u{i % 37}".encode()
            producer.send(OutRecord(f"{prefix}-clicks", default_partition(key, 2), key,
                                    b'{"page": "p%d"}' % (i % 11), 1_000 + i))
        await producer.flush()
    stats = await run_services([topology], broker, until_idle=True, state_dir=tmp_path / "state")
    assert (stats.services["svc"].events_in, stats.services["svc"].events_out) == (400, 800)


def _check(seen: dict[str, list[int]], loop_thread: int) -> None:
    assert seen["commit"] and seen["apply_changelog"] and seen["open"], seen  # the run exercised them
    on_loop = {name: threads.count(loop_thread) for name, threads in seen.items() if loop_thread in threads}
    assert not on_loop, f"TaskState methods ran on the event loop's thread: {on_loop}"


def test_local_state_io_runs_off_the_event_loop_on_the_local_broker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_threads(monkeypatch)

    async def main() -> int:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _scenario(broker, tmp_path, None)
        return threading.get_ident()

    _check(seen, asyncio.run(main()))


@pytest.mark.kafka
def test_local_state_io_runs_off_the_event_loop_on_kafka(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str) -> None:
    seen = _record_threads(monkeypatch)

    async def main() -> int:
        async with started(KafkaBroker({"bootstrap_servers": kafka_bootstrap})) as broker:
            await _scenario(broker, tmp_path, kafka_bootstrap)
        return threading.get_ident()

    _check(seen, asyncio.run(main()))
