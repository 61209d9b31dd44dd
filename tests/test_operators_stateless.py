"""Stateless operators: what they compute, on the in-process test driver of `edm test` (the
``harness`` fixture: the compiled operators of `edm run`, no broker). What the runtime adds
(batches, commits, counters, services run until idle) is tested in test_runtime.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


from edm_runner.testing.harness import Harness
from helpers.topologies import header

Input = tuple  # (key bytes | None, value bytes | None[, headers])
Harnessed = Callable[..., Harness]


def j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def produce(h: Harness, stream: str, items: list[Input]) -> None:
    """``items`` to partition 0 of ``stream``, the i-th at timestamp 1000 + i."""
    for i, item in enumerate(items):
        h.produce(stream, item[1], item[0], timestamp=1000 + i, partition=0,
                  headers=dict(item[2]) if len(item) > 2 else None)


STREAMS = header("in", "out", "other", "dlq", partitions={"out": 3})


def test_mapping_operators(tmp_path: Path, harness: Harnessed) -> None:
    (tmp_path / "fns.py").write_text(
        "from pathlib import Path\n"
        "def seen(v):\n"
        "    with open(Path(__file__).with_name('seen.txt'), 'a') as f:\n"
        "        f.write(v['name'] + '\\n')\n")
    h = harness(STREAMS + """
functions:
  seen: {python: fns:seen}
pipelines:
  p:
    from: in
    steps:
      - filter_not: value.drop
      - peek: seen(value)
      - map: {key: value.name, value: "{'old_key': key, 'n': value.n}"}
      - flat_map: "[[key ~ '-a', value.n], [key ~ '-b', value.n + 1]]"
      - flat_map_values: "[value, value * 10]"
      - select_key: key | upper
    to: other
""")
    produce(h, "in", [(b"x", j({"name": "n1", "n": 1, "drop": False})),
                      (b"y", j({"name": "n2", "n": 5, "drop": True})),
                      (b"z", j({"name": "n3", "n": 2}))])
    out = h.records("other")
    assert [(r["key"], r["value"]) for r in out] == [
        ("N1-A", 1), ("N1-A", 10), ("N1-B", 2), ("N1-B", 20),
        ("N3-A", 2), ("N3-A", 20), ("N3-B", 3), ("N3-B", 30)]
    assert all(r["timestamp"] == 1000 for r in out[:4]) and all(r["timestamp"] == 1002 for r in out[4:])
    assert (tmp_path / "seen.txt").read_text().split() == ["n1", "n3"]


def test_null_keys_round_robin_and_tombstones_pass_through(harness: Harnessed) -> None:
    h = harness(STREAMS + """
  entities: {topic: entities, partitions: 2, type: entity, key: string, value: json}
pipelines:
  p:
    from: in
    to: out
  q:
    from: entities
    to: other
""")
    produce(h, "in", [(None, j({"i": i})) for i in range(7)])
    produce(h, "entities", [(b"e1", j({"v": 1})), (b"e1", None)])
    out = h.records("out")
    assert [(r["partition"], r["value"]["i"]) for r in sorted(out, key=lambda r: r["value"]["i"])] \
        == [(0, 0), (1, 1), (2, 2), (0, 3), (1, 4), (2, 5), (0, 6)]
    assert all(r["key"] is None for r in out)
    assert [(w.record.key, w.record.value) for w in h.driver.written if w.record.topic == "other"] \
        == [(b"e1", b'{"v":1}'), (b"e1", None)]  # the bytes, as written


def test_merge_joins_from_its_step_on(harness: Harnessed) -> None:
    h = harness(STREAMS + """
  extra: {topic: extra, partitions: 1, key: string, value: json}
pipelines:
  p:
    from: in
    steps:
      - map_values: "{'n': value.n, 'seen_before_merge': true}"
      - merge: extra
      - map_values: "{'n': value.n, 'before': value.seen_before_merge is defined, 'tag': 't'}"
    to: other
""")
    produce(h, "in", [(b"a", j({"n": 1}))])
    produce(h, "extra", [(b"b", j({"n": 2}))])
    out = [r["value"] for r in h.records("other")]
    assert sorted(out, key=lambda v: v["n"]) == [{"n": 1, "before": True, "tag": "t"},
                                                 {"n": 2, "before": False, "tag": "t"}]


def test_repartition_to_stream_with_round_robin_and_function_partitioners(tmp_path: Path,
                                                                           harness: Harnessed) -> None:
    (tmp_path / "parts.py").write_text("def last(key, value, n):\n    return n - 1\n")
    h = harness(STREAMS + """
  spread: {topic: spread, partitions: 3, key: string, value: json}
  pinned: {topic: pinned, partitions: 3, key: string, value: json}
functions:
  last: {python: parts:last}
pipelines:
  a:
    from: in
    steps:
      - repartition: {to: spread, partitioner: round_robin}
  b:
    from: spread
    steps:
      - repartition: {to: pinned, key: "'p' ~ value.n", partitioner: {function: last}}
""")
    produce(h, "in", [(b"same", j({"n": i})) for i in range(6)])
    spread, pinned = h.records("spread"), h.records("pinned")
    assert sorted((r["partition"], r["value"]["n"]) for r in spread) == \
        [(0, 0), (0, 3), (1, 1), (1, 4), (2, 2), (2, 5)]
    assert {r["partition"] for r in pinned} == {2}
    assert sorted(r["key"] for r in pinned) == [f"p{i}" for i in range(6)]


def test_stream_on_error_applies_to_decode_errors(harness: Harnessed) -> None:
    h = harness(STREAMS.replace("in: {topic: in, partitions: 1, key: string, value: json}",
                                "in: {topic: in, partitions: 1, key: string, value: json, on_error: skip}")
                + """
pipelines:
  p:
    from: in
    to: other
""")
    produce(h, "in", [(b"a", j({"n": 1})), (b"b", j({"n": 2})), (b"c", j({"n": 5})), (b"d", j({"n": 0})),
                      (b"e", b"not json"), (b"f", j({"n": 10}))])
    assert h.stats.skipped == 1 and len(h.records("other")) == 5
