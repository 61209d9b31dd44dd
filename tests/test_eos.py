"""Exactly-once (`processing: {guarantee: exactly_once}`) with real `edm run` processes.

- Kafka: a runner SIGKILLed with batches sent in an open transaction, or after its transactions
  committed but before its stores were written, then restarted: the read-committed output holds
  every input exactly once (the raw log holds the aborted copies too, so the test can fail), the
  unclean local state is wiped and restored, and the store equals the reference.
- Two producers with one transactional id: the second fences the first.
- Local broker: the same crash; the state side is exact and the clean mark is honoured.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.kafka_eos import (TaskFenced, TransactionalProducer, read_committed,
                                          transactional_id)
from edm_runner.brokers.local import LocalBroker
from edm_runner.state.clean_mark import CLEAN_MARK
from helpers import eos_flow
from helpers.kafka_flow import Runner
from helpers.reliability_flow import run_until_idle, scan
from helpers.brokers import run_on, started

EVENTS = 2000
WIPED = "was not closed cleanly under exactly_once"


def _kafka_outputs(bootstrap: str, name: str, committed: bool) -> Counter[int]:
    return run_on(KafkaBroker({"bootstrap_servers": bootstrap}), lambda b: eos_flow.read_outputs(b, name, committed))


def _assert_exactly_once(seen: Counter[int], total: int) -> None:
    missing = [n for n in range(total) if n not in seen]
    duplicated = {n: c for n, c in seen.items() if c > 1}
    assert not missing and not duplicated, \
        f"{len(missing)} missing (first {missing[:5]}), {len(duplicated)} duplicated ({list(duplicated.items())[:5]})"


@pytest.mark.kafka
def test_kafka_sigkill_with_an_open_transaction_then_restart_is_exactly_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    name = f"eos-{uuid.uuid4().hex[:8]}"
    # A commit interval longer than the test: everything the runner sends stays uncommitted.
    topology = eos_flow.write_topology(tmp_path, name, kafka_bootstrap, "exactly_once",
                                       max_batch=100, commit_interval_ms=600_000)
    state_dir = tmp_path / "state"
    run_on(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), lambda b: eos_flow.produce(b, name, 0, EVENTS))

    runner = Runner(topology, "--state-dir", str(state_dir))
    try:
        deadline = time.monotonic() + 60
        while not _kafka_outputs(kafka_bootstrap, name, committed=False):
            assert runner.alive() and time.monotonic() < deadline, runner.stderr()
    finally:
        runner.kill()
    assert not _kafka_outputs(kafka_bootstrap, name, committed=True)

    restarted = run_until_idle(topology, state_dir)
    assert restarted.code == 0, restarted.stderr
    assert WIPED in restarted.stderr  # SIGKILL left no clean mark
    _assert_exactly_once(_kafka_outputs(kafka_bootstrap, name, committed=True), EVENTS)
    # The aborted transaction's outputs are in the log: only read_committed hides them.
    assert any(c > 1 for c in _kafka_outputs(kafka_bootstrap, name, committed=False).values())
    assert scan(topology, state_dir, "totals") == eos_flow.reference(EVENTS)


@pytest.mark.kafka
def test_kafka_sigkill_between_commit_and_store_write_then_restart_is_exactly_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    name = f"eos-{uuid.uuid4().hex[:8]}"
    topology = eos_flow.write_topology(tmp_path, name, kafka_bootstrap, "exactly_once",
                                       max_batch=100, commit_interval_ms=1)
    state_dir = tmp_path / "state"
    run_on(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), lambda b: eos_flow.produce(b, name, 0, EVENTS))

    crashed = run_until_idle(topology, state_dir, crash_at="after_produce:3")
    assert crashed.killed, f"not killed at after_produce:3 (exit {crashed.code})\n{crashed.stderr}"
    restarted = run_until_idle(topology, state_dir)
    assert restarted.code == 0, restarted.stderr
    assert WIPED in restarted.stderr
    _assert_exactly_once(_kafka_outputs(kafka_bootstrap, name, committed=True), EVENTS)
    assert scan(topology, state_dir, "totals") == eos_flow.reference(EVENTS)

    # A clean stop left the mark: the next start keeps the local state.
    again = run_until_idle(topology, state_dir)
    assert again.code == 0 and WIPED not in again.stderr, again.stderr


@pytest.mark.kafka
def test_a_second_producer_of_a_task_fences_the_first(kafka_bootstrap: str) -> None:
    topic = f"eos-fence-{uuid.uuid4().hex[:8]}"
    tid = transactional_id(topic, 0, 0)

    async def go(broker: KafkaBroker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 1)])
        old = TransactionalProducer(broker, tid)
        await old.start()
        old.send(OutRecord(topic, 0, b"k", b"zombie", 0))
        new = TransactionalProducer(broker, tid)
        await new.start()  # aborts the old transaction and fences its epoch
        try:
            with pytest.raises(TaskFenced, match="another instance took over"):
                await old.commit({}, "nobody")
            new.send(OutRecord(topic, 0, b"k", b"owner", 0))
            await new.commit({}, "nobody")
        finally:
            await old.close()
            await new.close()
        async with started(read_committed(broker).consumer(None, [topic])) as reader:
            values = [r.value for rs in (await reader.getmany(timeout_ms=5000, max_records=10)).values()
                      for r in rs]
        assert values == [b"owner"]

    run_on(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), go)


def test_local_sigkill_then_restart_keeps_outputs_and_store_exact(tmp_path: Path) -> None:
    name = f"eos-{uuid.uuid4().hex[:8]}"
    topology = eos_flow.write_topology(tmp_path, name, None, "exactly_once", max_batch=100)
    state_dir = tmp_path / "state"
    run_on(LocalBroker(tmp_path / "broker"), lambda b: eos_flow.produce(b, name, 0, EVENTS))

    crashed = run_until_idle(topology, state_dir, crash_at="after_produce:3")
    assert crashed.killed, crashed.stderr
    marks = list((state_dir / "state" / name).glob(f"*/{CLEAN_MARK}"))
    assert marks == []
    restarted = run_until_idle(topology, state_dir)
    assert restarted.code == 0, restarted.stderr
    assert WIPED in restarted.stderr
    assert scan(topology, state_dir, "totals") == eos_flow.reference(EVENTS)
    assert len(list((state_dir / "state" / name).glob(f"*/{CLEAN_MARK}"))) == eos_flow.PARTITIONS

    async def outputs(broker: LocalBroker) -> Counter[int]:
        consumer = broker.consumer(None, [f"{name}-totals"])
        await consumer.start()
        seen: Counter[int] = Counter()
        try:
            while batch := await consumer.getmany(timeout_ms=0, max_records=10_000):
                for records in batch.values():
                    seen.update(json.loads(r.value)["last"] for r in records)
        finally:
            await consumer.close()
        return seen

    _assert_exactly_once(run_on(LocalBroker(tmp_path / "broker"), outputs), EVENTS)
