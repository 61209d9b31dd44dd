"""Stateful operators: what they compute, on the in-process test driver of `edm test`
(``edm_runner.testing.harness``: the compiled operators of `edm run` on real LMDB stores, no
broker). What needs the real runtime, a restart and a batch replayed without its failing
event, runs ``run_services`` on a real LocalBroker (``runtime=True``).

Expected outputs are computed by hand from the inputs (timestamps chosen per test)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from edm_runner.brokers.base import OutRecord, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.language import load_file
from edm_runner.runtime import RunStats, run_services
from edm_runner.testing.harness import Harness
from helpers.brokers import records, run_on
from helpers.topologies import header

HEADER = header("in", "in2", "out", "dlq", "users", "profiles")

Event = tuple  # (key, value, timestamp ms)


def j(obj: Any) -> bytes | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":")).encode()


class Run:
    """One service, its state kept across ``run`` calls: on the test driver (``harness``, the
    conftest fixture), or with ``harness=None`` on ``run_services`` over a LocalBroker (each
    ``run`` a new run of the service: a restart)."""

    def __init__(self, tmp_path: Path, body: str, harness: Callable[..., Harness] | None) -> None:
        path = tmp_path / "topology.yaml"
        path.write_text(HEADER + textwrap.dedent(body))
        self.topology = load_file(path)
        self.broker_dir = tmp_path / "broker"
        self.state_dir = tmp_path / "state"
        self.harness = harness(path) if harness is not None else None
        self.stats: RunStats | None = None

    def run(self, inputs: dict[str, list[Event]]) -> list[tuple[Any, Any, int]]:
        """Writes ``inputs`` and processes them; returns everything in `out` so far."""
        if self.harness is not None:
            for stream, events in inputs.items():
                for k, v, ts in events:
                    self.harness.produce(stream, v, k, timestamp=ts)
            self.stats = self.harness.stats
            return [(r["key"], r["value"], r["timestamp"]) for r in self.harness.records("out")]

        async def main(broker) -> list[tuple[Any, Any, int]]:
            for topic, events in inputs.items():
                await broker.ensure_topics([TopicSpec(topic, 1)])
                producer = broker.producer()
                for k, v, ts in events:
                    producer.send(OutRecord(topic, 0, None if k is None else k.encode(), j(v), ts, ()))
                await producer.flush()
            self.stats = await run_services([self.topology], broker, until_idle=True,
                                            state_dir=self.state_dir)
            await broker.ensure_topics([TopicSpec("out", 1)])
            return [(None if r.key is None else r.key.decode(), json.loads(r.value) if r.value else None,
                     r.timestamp_ms) for r in await records(broker, "out")]
        return run_on(LocalBroker(self.broker_dir), main)


@pytest.fixture
def service(tmp_path: Path, harness: Callable[..., Harness]) -> Callable[..., Run]:
    """``service(body, runtime=False)``: a ``Run`` of ``HEADER + body``."""
    return lambda body, runtime=False: Run(tmp_path, body, None if runtime else harness)


def kv(out: list[tuple[Any, Any, int]]) -> list[tuple[Any, Any]]:
    return [(k, v) for k, v, _ in out]


def test_count_survives_restart_and_skips_null_values(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {counts: {type: key_value}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {count: {store: counts}}], to: out}
    """, runtime=True)
    first = r.run({"in": [("a", 1, 1), ("b", 1, 2), ("a", None, 3), ("a", 1, 4)]})
    assert kv(first) == [("a", 1), ("b", 1), ("a", 2)]
    second = r.run({"in": [("a", 1, 5), ("b", 1, 6)]})
    assert kv(second)[3:] == [("a", 3), ("b", 2)]


def test_reduce_and_aggregate(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {maxes: {type: key_value}, sums: {type: key_value}}
    pipelines:
      m: {from: in, steps: [{group_by_key: {}}, {reduce: {store: maxes, reducer: "[aggregate, value] | max"}}],
          to: out}
      s: {from: in2, steps: [{group_by: {key: value.k, name: by-k}},
                             {aggregate: {store: sums, initializer: "{'n': 0}",
                                          aggregator: "{'n': aggregate.n + value.x}"}}], to: out}
    """)
    out = r.run({"in": [("a", 3, 1), ("a", 1, 2), ("a", 7, 3)]})
    assert kv(out) == [("a", 3), ("a", 3), ("a", 7)]
    out = r.run({"in2": [("z", {"k": "g", "x": 2}, 4), ("y", {"k": "g", "x": 5}, 5), ("z", {"k": "h", "x": 1}, 6)]})
    assert kv(out)[3:] == [("g", {"n": 2}), ("g", {"n": 7}), ("h", {"n": 1})]


def test_count_on_a_grouped_table_subtracts_old_values(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {per-country: {type: key_value}}
    tables: {users-table: {from: users}}
    pipelines:
      p: {from: users-table, steps: [{group_by: {key: value.country, name: by-country}},
                                     {count: {store: per-country}}], to: out}
    """)
    out = r.run({"users": [("u1", {"country": "fr"}, 1), ("u2", {"country": "fr"}, 2),
                           ("u1", {"country": "de"}, 3), ("u2", None, 4)]})
    assert kv(out) == [("fr", 1), ("fr", 2), ("fr", 1), ("de", 1), ("fr", 0)]


def test_tumbling_update_grace_and_late_dead_letter(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {w: {type: window}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}},
                            {window: {type: tumbling, size: 10, grace: 5, late: {dead_letter: dlq}}},
                            {count: {store: w}}], to: out}
    """)
    out = r.run({"in": [("a", 1, 1), ("a", 1, 3), ("a", 1, 12), ("a", 1, 2), ("a", 1, 21), ("a", "late", 4)]})
    assert kv(out) == [("a", {"start": 0, "end": 10, "value": 1}), ("a", {"start": 0, "end": 10, "value": 2}),
                       ("a", {"start": 10, "end": 20, "value": 1}), ("a", {"start": 0, "end": 10, "value": 3}),
                       ("a", {"start": 20, "end": 30, "value": 1})]
    assert [ts for _, _, ts in out] == [1, 3, 12, 2, 21]
    assert r.stats.late == 1 and r.stats.dead_lettered == 1


def test_tumbling_emit_final_once_across_restarts(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {w: {type: window}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: tumbling, size: 10, grace: 5, emit: final}},
                            {aggregate: {store: w, initializer: "0", aggregator: "aggregate + value"}}], to: out}
    """, runtime=True)
    out = r.run({"in": [("a", 1, 1), ("b", 2, 5), ("a", 3, 9), ("a", 4, 12), ("a", 5, 14), ("b", 6, 15),
                        ("a", 7, 3)]})
    assert out == [("a", {"start": 0, "end": 10, "value": 4}, 9), ("b", {"start": 0, "end": 10, "value": 2}, 9)]
    assert r.stats.late == 1
    out = r.run({"in": [("a", 1, 40)]})
    assert out[2:] == [("a", {"start": 10, "end": 20, "value": 9}, 19), ("b", {"start": 10, "end": 20, "value": 6}, 19)]


def test_hopping_windows(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {w: {type: window}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: hopping, size: 10, advance: 5, grace: 100}},
                            {count: {store: w}}], to: out}
    """)
    out = r.run({"in": [("a", 1, 7), ("a", 1, 12)]})
    assert kv(out) == [("a", {"start": 0, "end": 10, "value": 1}), ("a", {"start": 5, "end": 15, "value": 1}),
                       ("a", {"start": 5, "end": 15, "value": 2}), ("a", {"start": 10, "end": 20, "value": 1})]


def test_sliding_windows_follow_kafka_streams(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {w: {type: window}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: sliding, size: 10, grace: 100}},
                            {count: {store: w}}], to: out}
    """)
    out = r.run({"in": [("a", 1, 10), ("a", 1, 15), ("a", 1, 30)]})
    assert kv(out) == [("a", {"start": 0, "end": 10, "value": 1}), ("a", {"start": 11, "end": 21, "value": 1}),
                       ("a", {"start": 5, "end": 15, "value": 2}), ("a", {"start": 20, "end": 30, "value": 1})]


def test_session_windows_merge(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {s: {type: session}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: session, gap: 5, grace: 10}},
                            {aggregate: {store: s, initializer: "0", aggregator: "aggregate + value",
                                         merger: "aggregate + other"}}], to: out}
    """)
    out = r.run({"in": [("a", 1, 1), ("a", 2, 4), ("a", 4, 20), ("a", 8, 12), ("a", 16, 16)]})
    assert kv(out) == [("a", {"start": 1, "end": 1, "value": 1}), ("a", {"start": 1, "end": 1, "value": None}),
                       ("a", {"start": 1, "end": 4, "value": 3}), ("a", {"start": 20, "end": 20, "value": 4}),
                       ("a", {"start": 12, "end": 12, "value": 8}), ("a", {"start": 12, "end": 12, "value": None}),
                       ("a", {"start": 20, "end": 20, "value": None}), ("a", {"start": 12, "end": 20, "value": 28})]


def test_session_emit_final(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {s: {type: session}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: session, gap: 5, emit: final}},
                            {count: {store: s}}], to: out}
    """)
    out = r.run({"in": [("a", 1, 1), ("a", 1, 3), ("b", 1, 10), ("b", 1, 20)]})
    assert kv(out) == [("a", {"start": 1, "end": 3, "value": 2}), ("b", {"start": 10, "end": 10, "value": 1})]


def test_stream_table_and_global_table_joins(service: Callable[..., Run]) -> None:
    r = service("""
    tables: {users-table: {from: users}}
    global_tables: {profiles-table: {from: profiles}}
    pipelines:
      left: {from: in, steps: [{join: {table: users-table, kind: left, value: "[value, other]"}}], to: out}
      inner: {from: in2, steps: [{join: {global_table: profiles-table, key: value.p, value: "[value.x, other]"}}],
              to: out}
    """)
    r.run({"users": [("u1", "U1", 1)], "profiles": [("p1", "P1", 1)]})
    out = r.run({"in": [("u1", 1, 2), ("u9", 2, 3)],
                 "in2": [("k", {"p": "p1", "x": 1}, 4), ("k", {"p": "p9", "x": 2}, 5)]})
    assert sorted(kv(out)) == [("k", [1, "P1"]), ("u1", [1, "U1"]), ("u9", [2, None])]


def _stream_stream(service: Callable[..., Run], kind: str) -> tuple[list, Run]:
    r = service(f"""
    pipelines:
      p: {{from: in, steps: [{{join: {{stream: in2, name: j, within: 10, kind: {kind}, value: "[value, other]"}}}}],
          to: out}}
    """)
    r.run({"in": [("a", "x", 100), ("b", "p", 101)]})
    r.run({"in2": [("a", "y", 105), ("c", "q", 106)]})
    r.run({"in": [("z", "w", 200)]})
    out = r.run({"in": [("d", "late", 150)]})
    return out, r


def test_stream_stream_inner_join(service: Callable[..., Run]) -> None:
    out, r = _stream_stream(service, "inner")
    assert out == [("a", ["x", "y"], 105)]
    assert r.stats.late == 1


def test_stream_stream_left_join(service: Callable[..., Run]) -> None:
    out, _ = _stream_stream(service, "left")
    assert out == [("a", ["x", "y"], 105), ("b", ["p", None], 101)]


def test_stream_stream_outer_join(service: Callable[..., Run]) -> None:
    out, _ = _stream_stream(service, "outer")
    assert out == [("a", ["x", "y"], 105), ("b", ["p", None], 101), ("c", [None, "q"], 106)]


def _table_table(service: Callable[..., Run], kind: str) -> list:
    r = service(f"""
    tables: {{users-table: {{from: users}}, profiles-table: {{from: profiles}}}}
    pipelines:
      p: {{from: users-table, steps: [{{join: {{table: profiles-table, kind: {kind}, value: "[value, other]"}}}}],
          to: out}}
    """)
    r.run({"users": [("u1", "A", 1)]})
    r.run({"profiles": [("u1", "P", 2)]})
    return kv(r.run({"users": [("u1", None, 3)]}))


def test_table_table_outer_join(service: Callable[..., Run]) -> None:
    assert _table_table(service, "outer") == [("u1", ["A", None]), ("u1", ["A", "P"]), ("u1", [None, "P"])]


def test_table_table_inner_join(service: Callable[..., Run]) -> None:
    assert _table_table(service, "inner") == [("u1", ["A", "P"]), ("u1", None)]


def test_failing_event_is_skipped_without_applying_its_batch_twice(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {sums: {type: key_value}, w: {type: window}}
    pipelines:
      kv: {from: in, on_error: skip,
           steps: [{group_by_key: {}}, {aggregate: {store: sums, initializer: "0", aggregator: "aggregate + value"}}],
           to: out}
      win: {from: in2, on_error: skip,
            steps: [{group_by_key: {}}, {window: {type: hopping, size: 10, advance: 5, grace: 100}},
                    {aggregate: {store: w, initializer: "0", aggregator: "aggregate + value"}}], to: out}
    """, runtime=True)  # the runtime processes a batch again without the event that failed in it
    out = r.run({"in": [("a", 1, 1), ("a", 2, 2), ("a", "bad", 3), ("a", 3, 4)]})
    assert kv(out) == [("a", 1), ("a", 3), ("a", 6)]
    assert r.stats.skipped == 1
    out = r.run({"in2": [("b", 1, 7), ("b", "bad", 8), ("b", 2, 9)]})
    assert kv(out)[3:] == [("b", {"start": 0, "end": 10, "value": 1}), ("b", {"start": 5, "end": 15, "value": 1}),
                           ("b", {"start": 0, "end": 10, "value": 3}), ("b", {"start": 5, "end": 15, "value": 3})]


def test_retention_deletes_old_windows(service: Callable[..., Run]) -> None:
    r = service("""
    stores: {w: {type: window, retention: 20}}
    pipelines:
      p: {from: in, steps: [{group_by_key: {}}, {window: {type: tumbling, size: 10}}, {count: {store: w}}], to: out}
    """)
    r.run({"in": [("a", 1, 1), ("a", 1, 15), ("a", 1, 31)]})
    # at stream time 31: [0, 10) ends at 10, 10 + 20 < 31 -> deleted; [10, 20) and [30, 40) kept
    assert r.harness.store("w") == {"a": [{"start": 10, "value": 1}, {"start": 30, "value": 1}]}
