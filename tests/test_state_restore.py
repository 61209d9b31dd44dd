"""Restoring stores from changelogs on the real local broker: every edge case of the design."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from edm_runner.brokers.base import OutRecord, Record, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.state import (Checkpoint, RestoreProgress, TaskState, restore_task,
                              task_dir)
from edm_runner.state.api import encode_json
from edm_runner.state.progress import Progress, observe
from helpers.brokers import run_on, started

TOPIC = "svc-counts-changelog"
TP = TopicPartition(TOPIC, 1)
IN = TopicPartition("events", 1)


def run(body: Callable[[LocalBroker], Awaitable[None]], tmp_path: Path) -> None:
    """``body`` on a started local broker holding the 2-partition changelog ``TOPIC``."""
    async def main(broker: LocalBroker) -> None:
        await broker.ensure_topics([TopicSpec(TOPIC, 2, compacted=True)])
        await body(broker)

    run_on(LocalBroker(tmp_path / "broker"), main)


async def append(broker: LocalBroker, partition: int, items: list[tuple[object, object | None]],
                 input_offset: int | None = None) -> int:
    """Changelog records (key, value; None = tombstone), the last one carrying an
    ``edm.input`` header when ``input_offset`` is given. Returns the new end offset."""
    records = [OutRecord(TOPIC, partition, encode_json(k), None if v is None else encode_json(v), 0)
               for k, v in items]
    if input_offset is not None:
        header = json.dumps({f"{IN.topic}:{IN.partition}": input_offset}).encode()
        records[-1].headers = (("edm.input", header),)
    ends = await broker.append_and_commit(records, "svc", {})
    return ends[TopicPartition(TOPIC, partition)]


async def restore(broker: LocalBroker, st: TaskState, end: int | None = None, **kwargs):
    async with started(broker.consumer(None, [TOPIC])) as consumer:
        if end is None:
            end = (await consumer.end_offsets([TP]))[TP]
        return await restore_task(st, "counts", consumer, TP, end,
                                  from_offset=st.checkpoint().changelogs.get(TP, 0), **kwargs)


def contents(st: TaskState) -> dict:
    return dict(st.store("counts").scan())


def open_task(tmp_path: Path) -> TaskState:
    st = TaskState.open(task_dir(tmp_path, "svc", 0, 1))
    st.register("counts", "key_value")
    return st


def test_restore_applies_latest_values_and_tracks_the_input_header(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        await append(broker, 0, [("other-partition", 1)])
        await append(broker, 1, [("a", 1), ("b", 1), ("c", 1)], input_offset=3)
        end = await append(broker, 1, [("a", 2), ("c", None), ("c", 7), ("b", None)],
                           input_offset=9)
        with open_task(tmp_path) as st:
            result = await restore(broker, st, batch_size=3)  # several batches
            assert result.records_read == 7 and result.input_position == {IN: 9}
            assert contents(st) == {"a": 2, "c": 7}
            assert st.checkpoint() == Checkpoint({TP: end}, {IN: 9})

    run(body, tmp_path)


def test_empty_changelog_reads_nothing(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        with open_task(tmp_path) as st:
            result = await restore(broker, st)
            assert result.records_read == 0 and result.input_position == {}
            assert contents(st) == {} and st.checkpoint() == Checkpoint()

    run(body, tmp_path)


def test_restore_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        mid = await append(broker, 1, [(f"k{i}", i) for i in range(10)], input_offset=10)
        with open_task(tmp_path) as st:
            assert (await restore(broker, st)).records_read == 10
        end = await append(broker, 1, [("k0", 100), ("new", 1)], input_offset=12)
        with open_task(tmp_path) as st:
            assert st.checkpoint().changelogs == {TP: mid}
            result = await restore(broker, st)
            assert result.records_read == 2 and result.input_position == {IN: 12}
            assert contents(st)["k0"] == 100 and len(contents(st)) == 11
            assert st.checkpoint() == Checkpoint({TP: end}, {IN: 12})

    run(body, tmp_path)


def test_restore_stops_at_the_end_offset_captured_at_start(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        end = await append(broker, 1, [("a", 1), ("b", 1)])
        await append(broker, 1, [("a", 2), ("late", 1)])  # after the captured end
        with open_task(tmp_path) as st:
            result = await restore(broker, st, end=end)
            assert result.records_read == 2 and contents(st) == {"a": 1, "b": 1}
            assert st.checkpoint().changelogs == {TP: end}

    run(body, tmp_path)


def test_restore_stops_where_a_changelog_shrunk_below_the_captured_end_ends(tmp_path: Path) -> None:
    """The end captured at start is past what the changelog now holds (it was truncated or
    recreated meanwhile): the restore applies what there is and stops at the changelog's end,
    without waiting for offsets that will not come."""
    async def body(broker: LocalBroker) -> None:
        end = await append(broker, 1, [("a", 1), ("b", 1), ("c", 1)])
        with open_task(tmp_path) as st:
            result = await restore(broker, st, end=end + 7)
            assert result.records_read == 3 and contents(st) == {"a": 1, "b": 1, "c": 1}
            assert st.checkpoint().changelogs == {TP: end}

    run(body, tmp_path)


def test_compacted_changelog_with_offset_gaps(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        for round_ in range(5):
            await append(broker, 1, [(f"k{i}", round_) for i in range(20)] + [("gone", round_)])
        end = await append(broker, 1, [("gone", None)], input_offset=42)
        removed = await broker.compact(TOPIC)
        assert removed == 4 * 21 + 1  # only the latest record per key is left
        with open_task(tmp_path) as st:
            result = await restore(broker, st)
            assert result.records_read == 21 and result.input_position == {IN: 42}
            assert contents(st) == {f"k{i}": 4 for i in range(20)}
            assert st.checkpoint().changelogs == {TP: end}

    run(body, tmp_path)


def test_recreated_changelog_wipes_the_store_and_restores_from_zero(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(broker: LocalBroker) -> None:
        await append(broker, 1, [(f"old{i}", i) for i in range(10)], input_offset=50)
        with open_task(tmp_path) as st:
            await restore(broker, st)
            assert st.checkpoint().changelogs == {TP: 10}
        assert await broker.delete_topic(TOPIC)
        await broker.ensure_topics([TopicSpec(TOPIC, 2, compacted=True)])
        end = await append(broker, 1, [("fresh", 1), ("fresher", 2)], input_offset=3)
        with open_task(tmp_path) as st, caplog.at_level(logging.WARNING, logger="edm.state"):
            result = await restore(broker, st)
            assert result.records_read == 2
            assert contents(st) == {"fresh": 1, "fresher": 2}
            # the old input offsets went with the old data
            assert st.checkpoint() == Checkpoint({TP: end}, {IN: 3})
        assert "recreated" in caplog.text and str(task_dir(tmp_path, "svc", 0, 1)) in caplog.text

    run(body, tmp_path)


def test_missing_local_state_restores_from_zero(tmp_path: Path) -> None:
    async def body(broker: LocalBroker) -> None:
        await append(broker, 1, [(f"k{i}", i) for i in range(30)], input_offset=30)
        with open_task(tmp_path) as st:
            await restore(broker, st)
            before = contents(st)
        shutil.rmtree(task_dir(tmp_path, "svc", 0, 1))
        with open_task(tmp_path) as st:
            assert st.fresh
            result = await restore(broker, st)
            assert result.records_read == 30 and contents(st) == before
            assert st.checkpoint() == Checkpoint({TP: 30}, {IN: 30})

    run(body, tmp_path)


def test_corrupted_lmdb_file_is_wiped_and_rebuilt(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def body(broker: LocalBroker) -> None:
        await append(broker, 1, [(f"k{i}", i) for i in range(30)], input_offset=30)
        with open_task(tmp_path) as st:
            await restore(broker, st)
            before = contents(st)
        data = task_dir(tmp_path, "svc", 0, 1) / "data.mdb"
        data.write_bytes(b"garbage" * (data.stat().st_size // 7))
        with caplog.at_level(logging.WARNING, logger="edm.state"):
            st = open_task(tmp_path)
        with st:
            assert st.fresh and "unreadable" in caplog.text
            assert (await restore(broker, st)).records_read == 30
            assert contents(st) == before

    run(body, tmp_path)


def test_table_restores_from_its_source_topic_up_to_the_committed_offset(tmp_path: Path) -> None:
    """A table's source holds serde bytes (here UTF-8 keys), converted to store bytes; the
    checkpoint's input offset of the source advances."""
    source = TopicPartition("users", 0)

    def convert(r: Record) -> tuple[bytes, bytes | None]:
        return encode_json(r.key.decode()), r.value

    async def body(broker: LocalBroker) -> None:
        await broker.ensure_topics([TopicSpec("users", 1, compacted=True)])
        await broker.append_and_commit(
            [OutRecord("users", 0, k.encode(), v, 0) for k, v in
             [("ann", b'{"age":1}'), ("bob", b'{"age":2}'), ("ann", None), ("cy", b"{}")]],
            "svc", {source: 3})
        with TaskState.open(task_dir(tmp_path, "svc", 0, 0)) as st:
            st.register("users-table", "key_value", changelog=False)
            consumer = broker.consumer(None, ["users"])
            await consumer.start()
            result = await restore_task(st, "users-table", consumer, source,
                                        await broker.committed("svc", source), from_offset=0,
                                        convert=convert, source=True)
            await consumer.close()
            assert result.records_read == 3
            assert dict(st.store("users-table").scan()) == {"bob": {"age": 2}}
            assert st.checkpoint() == Checkpoint({}, {source: 3})

    run(body, tmp_path)


def test_progress_reports_rate_and_eta_to_its_observer() -> None:
    """The state package draws nothing: snapshots go to the observer the CLI installed."""
    now = [0.0]
    seen: list[Progress] = []
    with observe(seen.append):
        bar = RestoreProgress("restoring counts", 1000, clock=lambda: now[0])
    now[0] = 1.0
    bar.advance(250)
    assert "25%" in seen[-1].line() and "250/1000" in seen[-1].line() and "ETA 3s" in seen[-1].line()
    now[0] = 4.0
    bar.advance(750)
    bar.finish()
    assert seen[-1].final and seen[-1].percent == 100 and seen[-1].done == 1000


def test_progress_logs_every_interval_without_an_observer(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = RestoreProgress("restoring counts", 100, interval_s=2.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="edm.state"):
        for _ in range(10):
            now[0] += 0.5
            progress.advance(10)
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # at 2 s, at 4 s, and the final line
    assert "ETA" in lines[0] and "/s" in lines[0] and "done: 100 offsets" in lines[-1]


def test_restore_of_a_changelog_larger_than_a_fetch(tmp_path: Path) -> None:
    """100,000 records (more than one fetch and one LMDB transaction) restore to every key with
    the changelog's end in the checkpoint. Throughput against a hand-written loop is the
    kafka-restore bench's (``python -m bench kafka-restore``), not a test's."""
    n = 100_000

    async def body(broker: LocalBroker) -> None:
        for start in range(0, n, 50_000):
            end = await append(broker, 1, [(f"user-{i}", i) for i in range(start, start + 50_000)])
        with open_task(tmp_path) as st:
            result = await restore(broker, st)
            assert result.records_read == n == end
            counts = st.store("counts")
            assert [counts.get(f"user-{i}") for i in (0, 77, 49_999, 50_000, n - 1)] == [0, 77, 49_999, 50_000, n - 1]
            assert st.checkpoint().changelogs == {TP: end}

    run(body, tmp_path)


@pytest.mark.kafka
def test_restore_from_a_kafka_changelog(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The same routine on Apache Kafka: one partition of a 2-partition compacted changelog,
    headers tracked, a captured end offset respected."""
    import uuid

    from edm_runner.brokers.kafka import KafkaBroker

    topic = f"state-restore-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 1)
    n = 60_000

    async def main(broker) -> None:
        await broker.ensure_topics([TopicSpec(topic, 2, compacted=True)])
        producer = broker.producer()
        await producer.start()
        for i in range(n):
            producer.send(OutRecord(topic, i % 2, encode_json(f"k{i}"), encode_json(i), 0))
        header = json.dumps({f"{IN.topic}:{IN.partition}": 77}).encode()
        producer.send(OutRecord(topic, 1, b'"k1"', b"-1", 0, (("edm.input", header),)))
        await producer.flush()
        reader = broker.consumer(None, [topic])
        await reader.start()
        end = (await reader.end_offsets([tp]))[tp]
        producer.send(OutRecord(topic, 1, b'"late"', b"1", 0))  # after the captured end
        await producer.flush()
        await producer.close()

        with TaskState.open(task_dir(tmp_path, "svc", 0, 1)) as st:
            st.register("counts", "key_value")
            result = await restore_task(st, "counts", reader, tp, end, from_offset=0)
            await reader.close()
            assert result.records_read == n // 2 + 1 and result.input_position == {IN: 77}
            kv = st.store("counts")
            assert kv.get("k1") == -1 and kv.get("k3") == 3 and kv.get("k2") is None
            assert kv.get("late") is None
            assert st.checkpoint() == Checkpoint({tp: end}, {IN: 77})

    run_on(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), main)
