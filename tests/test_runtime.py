"""The processing runtime end to end: topology files loaded with the real loader, events
produced to and read from a real LocalBroker (LMDB), services run with ``until_idle``: batches,
commits, counters, error policies. What stateless operators compute on their own is tested on
the in-process driver (test_operators_stateless.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from pathlib import Path

import pytest

from edm_runner.brokers.base import OutRecord, Record, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.errors import ProcessingError
from edm_runner.runtime import RunStats, run_services
from edm_runner.language import load_file
from edm_runner.language.model import Topology
from helpers.brokers import RunLocal, records
from helpers.topologies import header

Input = tuple  # (key bytes | None, value bytes | None[, headers])


def load(tmp_path: Path, text: str, name: str = "topology.yaml") -> Topology:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_file(path)


def j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def produce(broker: LocalBroker, topic: str, items: list[Input], partitions: int = 1,
                  partition: int = 0) -> None:
    await broker.ensure_topics([TopicSpec(topic, partitions)])
    producer = broker.producer()
    for i, item in enumerate(items):
        headers = item[2] if len(item) > 2 else ()
        producer.send(OutRecord(topic, partition, item[0], item[1], 1000 + i, headers))
    await producer.flush()


def values(found: list[Record]) -> list:
    return [None if r.value is None else json.loads(r.value) for r in found]


STREAMS = header("in", "out", "other", "dlq", partitions={"out": 3})


def test_filter_map_values_to_keeps_timestamps_headers_and_partitions(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, STREAMS + """
pipelines:
  p:
    from: in
    steps:
      - filter: value.n % 2 == 0
      - map_values: "{'double': value.n * 2, 'k': key}"
    to: out
""")

    async def body(broker):
        await produce(broker, "in", [(f"k{i}".encode(), j({"n": i}), (("h", b"v"),)) for i in range(10)])
        stats = await run_services([t], broker, until_idle=True)
        return stats, await records(broker, "out")

    stats, out = run_local(body)
    assert stats.events_in == 10 and stats.events_out == 5
    by_key = {r.key: r for r in out}
    assert sorted(by_key) == [b"k0", b"k2", b"k4", b"k6", b"k8"]
    for i in (0, 2, 4, 6, 8):
        r = by_key[f"k{i}".encode()]
        assert json.loads(r.value) == {"double": 2 * i, "k": f"k{i}"}
        assert r.partition == default_partition(r.key, 3)
        assert r.timestamp_ms == 1000 + i
        assert r.headers == (("h", b"v"),)


def test_log_step_logs_each_event(tmp_path: Path, run_local: RunLocal, caplog: pytest.LogCaptureFixture) -> None:
    t = load(tmp_path, STREAMS + """
pipelines:
  p:
    from: in
    steps:
      - log: {message: "'got ' ~ value.n", level: warning}
      - log: true
""")
    caplog.set_level(logging.INFO, logger="edm")
    run_local(lambda broker: _run_with(broker, t, "in", [(b"a", j({"n": 1})), (b"b", j({"n": 2}))]))
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name == "edm.svc.p"]
    assert lines == [("edm.svc.p", "WARNING", "got 1"), ("edm.svc.p", "WARNING", "got 2"),
                     ("edm.svc.p", "INFO", "key='a' value={'n': 1}"),
                     ("edm.svc.p", "INFO", "key='b' value={'n': 2}")]


async def _run_with(broker, t, topic, items, partitions=1) -> RunStats:
    await produce(broker, topic, items, partitions)
    return await run_services([t], broker, until_idle=True)


def test_branch_first_match_otherwise_and_per_event_to(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, STREAMS + """
pipelines:
  p:
    from: in
    branch:
      - when: value.n > 10
        to: out
      - when: value.n > 5
        steps: [{map_values: "value.n"}]
        to: {select: "'other' if value > 7 else 'out'", streams: [out, other]}
      - when: value.n > 0
        to: other
""")

    async def body(broker):
        await produce(broker, "in", [(b"k", j({"n": n})) for n in (20, 8, 6, 3, 0, -1)])
        stats = await run_services([t], broker, until_idle=True)
        return stats, values(await records(broker, "out")), values(await records(broker, "other"))

    stats, out, other = run_local(body)
    assert sorted(out, key=str) == sorted([{"n": 20}, 6], key=str)  # first match: 20 not in arm 2/3
    assert other == [8, {"n": 3}]
    assert stats.events_out == 4  # 0 and -1 match no arm: dropped, like a filter


def test_repartition_internal_topic_new_key_and_partition_count(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, STREAMS + """
pipelines:
  p:
    from: in
    steps:
      - repartition: {name: by-user, partitions: 4, key: value.user}
      - map_values: "{'user': key, 'n': value.n, 'from': topic, 'p': partition}"
    to: out
""")

    async def body(broker):
        await produce(broker, "in", [(b"k", j({"user": f"u{i % 5}", "n": i})) for i in range(20)])
        stats = await run_services([t], broker, until_idle=True)
        topics = await broker.list_topics()
        return stats, topics, await records(broker, "svc-by-user-repartition"), await records(broker, "out")

    stats, topics, internal, out = run_local(body)
    assert topics["svc-by-user-repartition"] == 4
    assert len(internal) == 20
    for r in internal:
        assert r.key == j(json.loads(r.value)["user"])  # internal topics encode keys as JSON
        assert r.partition == default_partition(r.key, 4)
    assert len({r.partition for r in internal}) > 1
    assert sorted(v["n"] for v in values(out)) == list(range(20))
    for r in out:
        v = json.loads(r.value)
        assert r.key == v["user"].encode() and v["from"] == "svc-by-user-repartition"
    # per user, order is kept through the repartition
    for u in range(5):
        assert [v["n"] for v in values(out) if v["user"] == f"u{u}"] == list(range(u, 20, 5))
    # the user's streams (20 in, 20 out), the repartition topic apart
    assert (stats.events_in, stats.events_out, stats.internal_in, stats.internal_out) == (20, 20, 20, 20)


FAILING = STREAMS + """
processing: {max_batch: 2}
pipelines:
  p:
    from: in
{policy}
    steps:
      - map_values: "{'inv': 10 // value.n}"
    to: other
"""


def _failing_inputs() -> list[Input]:
    return [(b"a", j({"n": 1})), (b"b", j({"n": 2})), (b"c", j({"n": 5})), (b"d", j({"n": 0})),
            (b"e", b"not json"), (b"f", j({"n": 10}))]


def test_fail_policy_stops_without_committing_the_failing_batch(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, FAILING.replace("{policy}", ""))

    async def body(broker):
        await produce(broker, "in", _failing_inputs())
        with pytest.raises(ProcessingError) as info:
            await run_services([t], broker, until_idle=True)
        return info.value, await broker.committed("svc", TopicPartition("in", 0)), await records(broker, "other")

    error, committed, out = run_local(body)
    message = str(error)
    assert "pipeline 'p'" in message and "map_values" in message
    assert f"{tmp_path / 'topology.yaml'}:" in message  # file:line:col of the step
    assert "in/0/3" in message and "ZeroDivisionError" in message
    assert "on_error: skip" in message and "dead_letter" in message
    assert committed == 2  # the batch [c, d] holding the failing event is not committed
    assert values(out) == [{"inv": 10}, {"inv": 5}]


def test_skip_policy_counts_and_logs_a_sample(tmp_path: Path, run_local: RunLocal,
                                              caplog: pytest.LogCaptureFixture) -> None:
    t = load(tmp_path, FAILING.replace("{policy}", "    on_error: skip"))
    stats, out = run_local(lambda broker: _run_and_read(broker, t, "other"))
    assert stats.skipped == 2 and stats.services["svc"].skipped_by_pipeline == {"p": 2}
    assert values(out) == [{"inv": 10}, {"inv": 5}, {"inv": 2}, {"inv": 1}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("in/0/3" in w and "ZeroDivisionError" in w for w in warnings)
    assert any("in/0/4" in w and "invalid JSON" in w for w in warnings)


async def _run_and_read(broker, t, topic):
    await produce(broker, "in", _failing_inputs())
    stats = await run_services([t], broker, until_idle=True)
    return stats, await records(broker, topic)


def test_dead_letter_keeps_original_bytes_and_says_why(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, FAILING.replace("{policy}", "    on_error: {dead_letter: dlq}"))
    stats, dead = run_local(lambda broker: _run_and_read(broker, t, "dlq"))
    assert stats.dead_lettered == 2 and stats.events_out == 4
    assert [(r.key, r.value, r.timestamp_ms) for r in dead] == [(b"d", j({"n": 0}), 1003),
                                                                 (b"e", b"not json", 1004)]
    h0, h1 = dict(dead[0].headers), dict(dead[1].headers)
    assert h0["edm.error"].startswith(b"ZeroDivisionError")
    assert b"map_values" in h0["edm.error.step"] and b"topology.yaml:" in h0["edm.error.step"]
    assert (h0["edm.source.topic"], h0["edm.source.partition"], h0["edm.source.offset"]) == (b"in", b"0", b"3")
    assert h1["edm.error"].startswith(b"SerdeError: invalid JSON") and b"decode" in h1["edm.error.step"]
    assert h1["edm.source.offset"] == b"4"


def test_business_services_run_until_idle_across_services(tmp_path: Path, run_local: RunLocal) -> None:
    first = load(tmp_path, header("in", "mid", name="first", partitions={"mid": 2}) + """
pipelines:
  p: {from: in, steps: [{map_values: "value.n + 1"}], to: mid}
""", "first.yaml")
    second = load(tmp_path, header("mid", "final", name="second", partitions={"mid": 2}) + """
pipelines:
  p: {from: mid, steps: [{filter: value > 2}], to: final}
""", "second.yaml")

    async def body(broker):
        await produce(broker, "in", [(f"k{i}".encode(), j({"n": i})) for i in range(50)])
        stats = await run_services([second, first], broker, until_idle=True)
        return stats, await records(broker, "final")

    stats, final = run_local(body)
    assert sorted(values(final)) == list(range(3, 51))
    assert stats.services["first"].events_out == 50 and stats.services["second"].events_in == 50


def test_stop_event_finishes_commits_and_restart_resumes(tmp_path: Path, run_local: RunLocal) -> None:
    t = load(tmp_path, STREAMS + """
pipelines:
  p: {from: in, to: other}
""")

    async def body(broker):
        stop = asyncio.Event()
        await produce(broker, "in", [(b"a", j(1)), (b"b", j(2))])
        seen: list[int] = []

        def progress(stats: RunStats) -> None:
            seen.append(stats.events_in)

        async def stop_when_done():
            # On the local broker outputs and input offsets commit in one transaction: both
            # outputs readable means both inputs committed. A fetch wakes up on new records.
            await broker.ensure_topics([TopicSpec("other", 1)])
            reader = broker.consumer(None, ["other"])
            await reader.start()
            got = 0
            while got < 2:
                got += sum(map(len, (await reader.getmany(timeout_ms=60_000, max_records=10)).values()))
            await reader.close()
            assert await broker.committed("svc", TopicPartition("in", 0)) == 2
            stop.set()

        stopper = asyncio.create_task(stop_when_done())
        stats = await asyncio.wait_for(run_services([t], broker, stop=stop, on_progress=progress), 10)
        await stopper
        await produce(broker, "in", [(b"c", j(3))])
        again = await run_services([t], broker, until_idle=True)
        return stats, seen, again, values(await records(broker, "other"))

    stats, seen, again, out = run_local(body)
    assert stats.events_in == 2 and seen[-1] == 2
    assert again.events_in == 1  # resumed from the committed offset
    assert out == [1, 2, 3]
