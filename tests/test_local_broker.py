"""The embedded broker on real LMDB files, with real OS processes for concurrency and crashes."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from edm_runner.brokers import open_broker
from edm_runner.brokers.base import OutRecord, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.errors import BrokerError, EdmError
from edm_runner.language.model import BrokerSpec
from helpers.brokers import drain, run_on

WORKER = Path(__file__).parent / "helpers" / "local_broker_worker.py"


def run(body: Callable[[LocalBroker], Awaitable[None]], path: Path, **kwargs) -> None:
    """Run ``body`` against a started broker at ``path`` (options ``kwargs``), closed afterwards."""
    run_on(LocalBroker(path, **kwargs), body)


def rec(topic: str, partition: int, key: bytes | None, value: bytes | None, ts: int = 0,
        headers: tuple = ()) -> OutRecord:
    return OutRecord(topic, partition, key, value, ts, headers)


async def produce(broker: LocalBroker, records: list[OutRecord]) -> None:
    producer = broker.producer()
    await producer.start()
    for r in records:
        producer.send(r)
    await producer.close()


def test_offsets_are_dense_and_ordered_per_partition(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("events", 3)])
        await produce(b, [rec("events", i % 2, f"k{i}".encode(), f"v{i}".encode(), ts=1000 + i)
                          for i in range(10)])
        tps = [TopicPartition("events", p) for p in range(3)]
        assert await b.end_offsets(tps) == dict(zip(tps, [5, 5, 0]))
        got = await drain(b, ["events"])
        assert set(got) == {tps[0], tps[1]}
        for p, records in ((0, got[tps[0]]), (1, got[tps[1]])):
            assert [r.offset for r in records] == list(range(5))
            assert [r.value for r in records] == [f"v{i}".encode() for i in range(p, 10, 2)]
            assert [r.timestamp_ms for r in records] == [1000 + i for i in range(p, 10, 2)]
            assert all(r.topic == "events" and r.partition == p for r in records)
        # A second batch continues the offsets.
        await produce(b, [rec("events", 0, b"k", b"late")])
        assert (await b.end_offsets([tps[0]]))[tps[0]] == 6

    run(body, tmp_path)


def test_none_and_empty_keys_values_and_headers_round_trip(tmp_path: Path) -> None:
    headers = (("trace", b"abc"), ("empty", b""), ("r\u00e9sum\u00e9", bytes(range(256))),
               ("trace", b"second"))
    sent = [rec("t", 0, None, None), rec("t", 0, b"", b""), rec("t", 0, b"k", None),
            rec("t", 0, None, b"v", headers=headers), rec("t", 0, b"\x00\xff", b"\x00", ts=-5)]

    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 1)])
        await produce(b, sent)
        got = (await drain(b, ["t"]))[TopicPartition("t", 0)]
        assert [(r.key, r.value, r.headers, r.timestamp_ms) for r in got] == \
            [(s.key, s.value, s.headers, s.timestamp_ms) for s in sent]

    run(body, tmp_path)


def test_group_offsets_commit_resume_and_reset(tmp_path: Path) -> None:
    tp0, tp1 = TopicPartition("in", 0), TopicPartition("in", 1)

    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("in", 2)])
        await produce(b, [rec("in", i % 2, None, str(i).encode()) for i in range(20)])
        consumer = b.consumer("svc", ["in"])
        await consumer.start()
        assert consumer.assignment() == {tp0, tp1}
        assert await consumer.committed(tp0) is None
        first = await consumer.getmany(timeout_ms=0, max_records=6)
        assert {tp: len(rs) for tp, rs in first.items()} == {tp0: 3, tp1: 3}
        await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in first.items()})
        await consumer.close()

        again = b.consumer("svc", ["in"])
        await again.start()
        assert await again.position(tp0) == 3 and await again.committed(tp1) == 3
        rest = await again.getmany(timeout_ms=0, max_records=100)
        assert [r.offset for r in rest[tp0]] == list(range(3, 10))
        again.seek(tp1, 8)
        assert [r.offset for r in (await again.getmany(timeout_ms=0, max_records=100))[tp1]] == [8, 9]
        await again.close()

        # Without a group, from the end: only new records are seen, and commits are refused.
        tail = b.consumer(None, ["in"], from_beginning=False)
        await tail.start()
        assert await tail.position(tp0) == 10
        await produce(b, [rec("in", 0, None, b"new")])
        assert [r.value for r in (await tail.getmany(timeout_ms=0, max_records=10))[tp0]] == [b"new"]
        with pytest.raises(BrokerError, match="without a group"):
            await tail.commit({tp0: 1})
        await tail.close()

    run(body, tmp_path)


def test_getmany_waits_for_new_records_and_times_out(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 1)])
        consumer = b.consumer(None, ["t"])
        await consumer.start()
        assert await consumer.getmany(timeout_ms=50, max_records=10) == {}

        # A timeout far past the test's own deadline: the fetch returns because the data came.
        waiting = asyncio.create_task(consumer.getmany(timeout_ms=3_600_000, max_records=10))
        await produce(b, [rec("t", 0, b"k", b"v")])
        got = await asyncio.wait_for(waiting, 60)
        assert [r.value for r in got[TopicPartition("t", 0)]] == [b"v"]
        await consumer.close()

    run(body, tmp_path)


def test_getmany_is_fair_across_partitions(tmp_path: Path) -> None:
    busy, quiet = TopicPartition("t", 0), TopicPartition("t", 1)

    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 2)])
        await produce(b, [rec("t", 0, None, b"x")] * 1000 + [rec("t", 1, None, b"y")] * 10)
        consumer = b.consumer(None, ["t"])
        await consumer.start()
        got = await consumer.getmany(timeout_ms=0, max_records=100)
        # The quiet partition gets its records although the busy one alone could fill the batch,
        # and the rest of the batch goes to the busy one.
        assert len(got[quiet]) == 10 and len(got[busy]) == 90
        await consumer.close()

    run(body, tmp_path)


def test_compaction_keeps_latest_per_key_and_tombstones(tmp_path: Path) -> None:
    tp = TopicPartition("users", 0)

    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("users", 1, compacted=True), TopicSpec("plain", 1)])
        sent = [rec("users", 0, b"a", b"a1"), rec("users", 0, b"b", b"b1"),
                rec("users", 0, None, b"no-key"), rec("users", 0, b"a", b"a2"),
                rec("users", 0, b"b", None), rec("users", 0, b"c", b"c1"),
                rec("users", 0, b"a", b"a3")]
        await produce(b, sent)
        await produce(b, [rec("plain", 0, b"a", b"1"), rec("plain", 0, b"a", b"2")])
        assert await b.compact("users") == 3
        assert await b.compact("plain") == 1  # explicit compaction works on any topic
        got = (await drain(b, ["users"]))[tp]
        assert [(r.offset, r.key, r.value) for r in got] == [
            (2, None, b"no-key"), (4, b"b", None), (5, b"c", b"c1"), (6, b"a", b"a3")]
        assert (await b.end_offsets([tp]))[tp] == 7  # offsets are never reused
        assert await b.compact("users") == 0

    run(body, tmp_path)


def test_compaction_runs_automatically_when_dirty(tmp_path: Path) -> None:
    tp = TopicPartition("users", 0)

    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("users", 1, compacted=True), TopicSpec("events", 1)])
        for round_ in range(5):
            await produce(b, [rec("users", 0, f"k{i}".encode(), f"{round_}".encode())
                              for i in range(4)])
            await produce(b, [rec("events", 0, b"same", b"x")] * 4)
        got = (await drain(b, ["users", "events"]))
        # Compacted at 8 (dirty >= 8) and at 16 (dirty 8 >= live 4); 4 dirty ones remain.
        assert [r.value for r in got[tp]] == [b"3"] * 4 + [b"4"] * 4
        assert len(got[TopicPartition("events", 0)]) == 20  # a non-compacted topic keeps all

    run(body, tmp_path, compact_min_dirty=8)


def test_topic_errors_name_what_is_wrong(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("orders", 4)])
        await b.ensure_topics([TopicSpec("orders", 4)])  # idempotent
        with pytest.raises(BrokerError, match=r"'orders' has 4 partition\(s\).*declares 8"):
            await b.ensure_topics([TopicSpec("orders", 8)])
        with pytest.raises(BrokerError, match="no topic.*a-missing, b-missing"):
            await b.ensure_topics([TopicSpec("b-missing", 1), TopicSpec("orders", 4),
                                   TopicSpec("a-missing", 1)], create=False)
        assert await b.list_topics() == {"orders": 4}
        with pytest.raises(BrokerError, match="invalid topic name"):
            await b.ensure_topics([TopicSpec("bad name", 1)])
        with pytest.raises(BrokerError, match="partition 4 does not exist in topic orders"):
            await produce(b, [rec("orders", 4, None, b"x")])
        with pytest.raises(BrokerError, match="no topic.*nope"):
            await produce(b, [rec("nope", 0, None, b"x")])
        with pytest.raises(BrokerError, match="no topic.*nope"):
            await b.consumer(None, ["nope"]).start()
        assert await b.end_offsets([TopicPartition("orders", 0)]) == {TopicPartition("orders", 0): 0}

    run(body, tmp_path)


def test_failed_flush_keeps_records_for_a_retry(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        producer = b.producer()
        producer.send(rec("later", 0, None, b"x"))
        with pytest.raises(BrokerError):
            await producer.flush()
        await b.ensure_topics([TopicSpec("later", 1)])
        await producer.flush()
        assert (await b.end_offsets([TopicPartition("later", 0)]))[TopicPartition("later", 0)] == 1

    run(body, tmp_path)


def test_append_and_commit_is_one_transaction(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("in", 1), TopicSpec("out", 2)])
        ends = await b.append_and_commit(
            [rec("out", 0, None, b"a"), rec("out", 1, None, b"b"), rec("out", 0, None, b"c")],
            "svc", {TopicPartition("in", 0): 42})
        assert ends == {TopicPartition("out", 0): 2, TopicPartition("out", 1): 1}
        assert await b.committed("svc", TopicPartition("in", 0)) == 42
        # A failing append commits nothing either.
        with pytest.raises(BrokerError):
            await b.append_and_commit([rec("out", 0, None, b"d"), rec("out", 9, None, b"e")],
                                      "svc", {TopicPartition("in", 0): 50})
        assert await b.committed("svc", TopicPartition("in", 0)) == 42
        assert (await b.end_offsets([TopicPartition("out", 0)]))[TopicPartition("out", 0)] == 2

    run(body, tmp_path)


def test_delete_topic_and_reopen(tmp_path: Path) -> None:
    tp = TopicPartition("t", 0)

    async def first(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 1), TopicSpec("keep", 1)])
        await produce(b, [rec("t", 0, None, b"old")] * 3 + [rec("keep", 0, None, b"kept")])
        await b.append_and_commit([], "svc", {tp: 3, TopicPartition("keep", 0): 1})

    async def second(b: LocalBroker) -> None:  # a new broker object on the same files
        assert await b.list_topics() == {"t": 1, "keep": 1}
        assert await b.delete_topic("t") is True
        assert await b.delete_topic("t") is False
        assert await b.committed("svc", tp) is None
        assert await b.committed("svc", TopicPartition("keep", 0)) == 1
        await b.ensure_topics([TopicSpec("t", 2)])
        assert (await b.end_offsets([tp]))[tp] == 0
        got = await drain(b, ["t", "keep"])
        assert list(got) == [TopicPartition("keep", 0)]

    run(first, tmp_path)
    run(second, tmp_path)


def test_full_broker_is_a_clear_error(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 1)])
        with pytest.raises(BrokerError, match="is full"):
            for _ in range(100):
                await produce(b, [rec("t", 0, None, b"x" * 1000)] * 100)

    run(body, tmp_path, map_size=1 << 20)


@pytest.mark.parametrize("file, listed", [("shop.yaml", " -t shop.yaml"), (None, "")])
def test_full_broker_error_names_the_commands_that_free_room(tmp_path: Path, file: str | None,
                                                             listed: str) -> None:
    """The broker only says it is full; the CLI, which knows how edm was run, adds the commands
    (with the options in effect, and `-t FILE` only when the user gave a topology)."""
    from edm_runner.cli.common import connected as _connected
    from edm_runner.invocation import Invocation

    async def main() -> None:
        broker = LocalBroker(tmp_path / "broker", map_size=1 << 20)
        async with _connected(broker, Invocation(file, state_dir="my state")):
            await broker.ensure_topics([TopicSpec("t", 1)])
            for _ in range(100):
                await produce(broker, [rec("t", 0, None, b"x" * 1000)] * 100)

    with pytest.raises(BrokerError) as info:
        asyncio.run(main())
    message = str(info.value)
    assert f"the local broker at {tmp_path / 'broker'} is full (map size 1 MiB)" in message
    assert (f"(`edm topics{listed} --state-dir 'my state'` lists them, "
            f"`edm topics --delete TOPIC{listed} --state-dir 'my state'` deletes one)") in message


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_processes_append_concurrently_with_dense_offsets(tmp_path: Path) -> None:
    run(lambda b: b.ensure_topics([TopicSpec("shared", 2), TopicSpec("own-a", 1),
                                   TopicSpec("own-b", 1)]), tmp_path)
    procs = [_spawn("produce", str(tmp_path), "shared", "2", w, "3000", "100") for w in "xyz"]
    procs += [_spawn("produce", str(tmp_path), f"own-{w}", "1", w, "3000", "100") for w in "ab"]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    async def check(b: LocalBroker) -> None:
        got = await drain(b, ["shared", "own-a", "own-b"])
        for tp, records in got.items():
            assert [r.offset for r in records] == list(range(len(records))), tp
        for w in "ab":
            values = [r.value.split(b"|")[0] for r in got[TopicPartition(f"own-{w}", 0)]]
            assert values == [f"{w}:{i}".encode() for i in range(3000)]
        for w in "xyz":  # each writer's records are complete and in order within a partition
            for p in (0, 1):
                values = [r.value.split(b"|")[0] for r in got[TopicPartition("shared", p)]
                          if r.key == w.encode()]
                assert values == [f"{w}:{i}".encode() for i in range(p, 3000, 2)]

    run(check, tmp_path)


def test_sigkill_mid_write_leaves_a_prefix_and_consumers_resume(tmp_path: Path) -> None:
    run(lambda b: b.ensure_topics([TopicSpec("log", 1)]), tmp_path)
    producer = _spawn("produce", str(tmp_path), "log", "1", "w", "0", "500")
    consumer = _spawn("consume", str(tmp_path), "log", "svc")
    assert consumer.stdout.readline() == "ready\n"
    durable = 0
    while durable < 20_000:
        line = producer.stdout.readline()
        assert line.startswith("flushed "), producer.stderr.read()
        durable = int(line.split()[1])
    committed = 0
    while committed < 500:
        committed = int(consumer.stdout.readline().split()[1])
    os.kill(producer.pid, signal.SIGKILL)
    os.kill(consumer.pid, signal.SIGKILL)
    producer.wait()
    consumer.wait()
    # The producer may have flushed more after its last line was read, but never less.
    tail = producer.stdout.read().split()
    durable = max([durable] + [int(n) for n in tail[1::2]])
    committed = max([committed] + [int(n) for n in consumer.stdout.read().split()[1::2]])
    tp = TopicPartition("log", 0)

    async def check(b: LocalBroker) -> None:
        got = (await drain(b, ["log"]))[tp]
        assert len(got) >= durable and len(got) % 500 == 0  # whole batches only
        assert [r.offset for r in got] == list(range(len(got)))
        assert [r.value.split(b"|")[0] for r in got] == [f"w:{i}".encode() for i in range(len(got))]
        # The killed consumer's group lock is gone, and its group resumes where it committed.
        resumed = b.consumer("svc", ["log"])
        await resumed.start()
        assert await resumed.position(tp) >= committed
        assert await resumed.position(tp) == await b.committed("svc", tp)
        await resumed.close()
        # The broker still takes writes after the crash.
        await produce(b, [rec("log", 0, None, b"after")])
        assert (await b.end_offsets([tp]))[tp] == len(got) + 1

    run(check, tmp_path)


def test_second_process_in_the_same_group_is_refused(tmp_path: Path) -> None:
    run(lambda b: b.ensure_topics([TopicSpec("t", 1)]), tmp_path)
    holder = _spawn("consume", str(tmp_path), "t", "billing")
    try:
        assert holder.stdout.readline() == "ready\n"

        async def refused(b: LocalBroker) -> None:
            with pytest.raises(BrokerError, match="another instance of service 'billing'"):
                await b.consumer("billing", ["t"]).start()
            other = b.consumer("shipping", ["t"])  # another group is fine
            await other.start()
            await other.close()

        run(refused, tmp_path)
    finally:
        holder.kill()
        holder.wait()

    async def free(b: LocalBroker) -> None:
        first, second = b.consumer("billing", ["t"]), b.consumer("billing", ["t"])
        await first.start()
        await second.start()  # the same process may hold its own group twice
        await first.close()
        await second.close()

    run(free, tmp_path)


def _forked_child(path: str) -> None:
    run(lambda b: produce(b, [rec("t", 0, None, b"from-child")]), Path(path))


def test_forked_child_reopens_the_environment(tmp_path: Path) -> None:
    async def body(b: LocalBroker) -> None:
        await b.ensure_topics([TopicSpec("t", 1)])
        consumer = b.consumer("svc", ["t"])
        await consumer.start()  # the parent holds the group and an open environment
        child = multiprocessing.get_context("fork").Process(target=_forked_child,
                                                            args=(str(tmp_path),))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        await produce(b, [rec("t", 0, None, b"from-parent")])
        got = await consumer.getmany(timeout_ms=0, max_records=10)
        assert [r.value for r in got[TopicPartition("t", 0)]] == [b"from-child", b"from-parent"]
        await consumer.close()

    run(body, tmp_path)


def test_open_broker_picks_local_paths(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert open_broker(BrokerSpec(), state).path == state / "broker"
    assert open_broker(BrokerSpec(path=tmp_path / "b"), state).path == tmp_path / "b"
    assert open_broker(BrokerSpec(path=tmp_path / "b"), state, "local").path == tmp_path / "b"
    assert open_broker(BrokerSpec(), state, f"local:{tmp_path}/x").path == tmp_path / "x"
    kafka_spec = BrokerSpec(kind="kafka", options={"bootstrap_servers": "k:9092"})
    assert open_broker(kafka_spec, state, "local").path == state / "broker"
    assert open_broker(BrokerSpec(), state, "").path == state / "broker"  # empty: no override


def test_open_broker_kafka_override_keeps_the_spec_settings(tmp_path: Path) -> None:
    pytest.importorskip("aiokafka")
    spec = BrokerSpec(kind="kafka", options={"bootstrap_servers": "old:9092", "client_id": "me"})
    broker = open_broker(spec, tmp_path, "kafka://a:9092,b:9093")
    assert broker.describe() == "kafka at a:9092,b:9093"
    assert broker.client_id == "me"
    from_local = open_broker(BrokerSpec(path=tmp_path / "b"), tmp_path, "kafka://k:1")
    assert from_local.describe() == "kafka at k:1"
    assert open_broker(spec, tmp_path).describe() == "kafka at old:9092"


@pytest.mark.parametrize("url,message", [
    ("redis://x:1", "unknown broker"),
    ("local:", "empty path"),
    ("kafka://host", "'host' is not HOST:PORT"),
    ("kafka://a:1,:2", "':2' is not HOST:PORT"),
])
def test_open_broker_rejects_bad_urls(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(EdmError, match=message) as err:
        open_broker(BrokerSpec(), tmp_path, url)
    assert "kafka://HOST:PORT" in str(err.value)
