"""Issue 8, "silent wrong results": each test runs a real service (LocalBroker, LMDB state,
run_services) into a case that used to go wrong without a word."""
from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edm_runner.brokers import open_broker
from edm_runner.brokers.base import Broker, OutRecord, Record, TopicSpec
from edm_runner.records.partitioner import default_partition
from edm_runner.runtime import RunStats, run_services
from edm_runner.language import load_file
from edm_runner.language.model import BrokerSpec, Topology
from cli_helpers import edm
from helpers.brokers import read_to_end, run_on
from helpers.fake_api import FakeApi


def j(obj: Any) -> bytes | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":")).encode()


class Service:
    """One service over a broker (``url``) and a state dir kept across ``run`` calls. In the
    file text, ``{p}`` is a prefix unique to the test (service and topic names on Kafka)."""

    def __init__(self, tmp_path: Path, text: str, files: dict[str, str] | None = None,
                 url: str | None = None, state_dir: Path | None = None) -> None:
        for name, content in (files or {}).items():
            (tmp_path / name).write_text(textwrap.dedent(content))
        self.p = f"t{uuid.uuid4().hex[:8]}-"
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.path = tmp_path / "topology.yaml"
        self.write(text)
        self.url = url or f"local:{tmp_path / 'broker'}"
        self.state_dir = state_dir or tmp_path / "state"
        self.stats: RunStats | None = None

    def write(self, text: str) -> None:
        self.path.write_text(textwrap.dedent(text).replace("{p}", self.p))

    def topology(self) -> Topology:
        return load_file(self.path)

    def broker(self) -> Broker:
        return open_broker(BrokerSpec(), self.state_dir, self.url)

    def run(self, inputs: dict[str, list[tuple[Any, Any]]], read: str = "out",
            topology: Topology | None = None) -> list[tuple[Any, Any]]:
        """Appends ``inputs`` (stream -> (key, raw bytes or JSON-able value)), runs until
        idle, returns every (key, value) of stream ``read`` so far."""
        topology = topology or self.topology()

        async def main(broker) -> list[tuple[Any, Any]]:
            await produce(broker, topology, inputs)
            try:
                self.stats = await run_services([topology], broker, until_idle=True,
                                                state_dir=self.state_dir)
            finally:
                self.out = await read_all(broker, topology.streams[read].topic)
            return self.out
        return run_on(self.broker(), main)

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` on the service's broker so far (``{p}`` as in the file)."""
        return run_on(self.broker(), lambda broker: read_to_end(broker, topic.replace("{p}", self.p)))

    @property
    def service(self) -> Any:
        assert self.stats is not None
        return next(iter(self.stats.services.values()))


async def produce(broker: Broker, topology: Topology, inputs: dict[str, list[tuple[Any, Any]]]) -> None:
    for name, events in inputs.items():
        spec = topology.streams[name]
        await broker.ensure_topics([TopicSpec(spec.topic, spec.partitions, spec.compacted)])
        producer = broker.producer()
        await producer.start()
        for k, v, *ts in events:
            kb = k if isinstance(k, bytes) or k is None else k.encode()
            partition = default_partition(kb, spec.partitions) if kb is not None else 0
            producer.send(OutRecord(spec.topic, partition, kb, v if isinstance(v, bytes) else j(v),
                                    ts[0] if ts else 0, ()))
        await producer.flush()
        await producer.close()


async def read_all(broker: Broker, topic: str) -> list[tuple[Any, Any]]:
    return [(None if r.key is None else r.key.decode(), json.loads(r.value) if r.value else None)
            for r in await read_to_end(broker, topic)]


def error_of(record: Record) -> str:
    """The error a dead letter carries (its ``edm.error`` header)."""
    return dict(record.headers)["edm.error"].decode()


# -- a null value and the JSON Schema --------------------------------------------------------

SCHEMA = '{"type": "object", "required": ["total"]}'


def test_a_null_value_is_checked_against_the_schema_except_on_entity_streams(tmp_path: Path) -> None:
    svc = Service(tmp_path, """
    kind: microservice
    name: s
    streams:
      orders: {value: {format: json, schema: order.json}, on_error: skip}
      users: {type: entity, value: {format: json, schema: order.json}}
      out: {}
    tables: {users-table: {from: users}}
    pipelines:
      p: {from: orders, steps: [{map_values: "value.total"}], to: out}
      u: {from: users-table, steps: [{map_values: "value.total if value else -1"}], to: out}
    """, {"order.json": SCHEMA})
    out = svc.run({"orders": [("a", {"total": 1}), ("b", None), ("c", b"null"), ("d", {"total": 2})],
                   "users": [("u", {"total": 5}), ("u", None)]})
    assert sorted(out) == [("a", 1), ("d", 2), ("u", -1), ("u", 5)]
    assert svc.stats.skipped == 2


# -- one JSON codec ---------------------------------------------------------------------------

def test_an_aggregate_that_makes_nan_is_an_error_of_the_event_not_a_changelog_record(tmp_path: Path) -> None:
    svc = Service(tmp_path, """
    kind: microservice
    name: s
    streams: {in: {}, out: {}}
    stores: {sums: {type: key_value}}
    pipelines:
      p:
        from: in
        on_error: skip
        steps:
          - group_by_key: {}
          - aggregate: {store: sums, initializer: "0",
                        aggregator: "'nan' | float if value.bad else aggregate + value.x"}
        to: out
    """)
    out = svc.run({"in": [("a", {"x": 1}), ("a", {"bad": True}), ("a", {"x": 2})]})
    assert out == [("a", 1), ("a", 3)]
    assert svc.stats.skipped == 1
    changelog = svc.records("s-sums-changelog")
    assert b"NaN" not in b"".join(r.value or b"" for r in changelog)


# -- edm's own bugs are not bad events -----------------------------------------------------------

class _Buggy:
    """A step with a bug: an ``AttributeError`` on the event whose value is a dict."""

    label = "test_buggy"

    def __init__(self, pos: Any) -> None:
        from edm_runner.operators.api import Processor

        self.proc = type("BuggyProcessor", (Processor,), {
            "label": "test_buggy", "pos": pos,
            "process_one": lambda self, e: [e] if not isinstance(e.value, dict) else e.value.no_such_attribute})()


@pytest.fixture
def buggy_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from edm_runner.operators import registry

    registry.operators()
    monkeypatch.setitem(registry._OPERATORS, "test_buggy", registry.Operator(
        "test_buggy", {"type": "object"}, lambda step, ctx: _Buggy(step.pos).proc))


def test_an_internal_error_stops_the_service_and_commits_nothing(tmp_path: Path, broker_url: str,
                                                                  buggy_operator: None) -> None:
    from edm_runner.errors import InternalError

    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}s"
    streams: {in: {topic: "{p}in"}, out: {topic: "{p}out"}}
    pipelines:
      p:
        from: in
        on_error: skip
        steps: [{test_buggy: {}}, {map_values: "value + 1"}]
        to: out
    """, url=broker_url)
    with pytest.raises(InternalError) as info:
        svc.run({"in": [("a", 1), ("b", "text"), ("c", {"x": 1}), ("d", 2)]})
    message = str(info.value)
    assert "step p.steps[0] (test_buggy)" in message and "AttributeError" in message
    assert "This is a bug in edm, not in the topology or the data; nothing from this batch on was committed" \
        in message
    assert svc.out == []  # the user error ("text" + 1) would have been skipped, but nothing was sent

    async def committed(broker) -> dict:
        return await broker.group_offsets(f"{svc.p}s", [f"{svc.p}in"])
    assert not any(run_on(svc.broker(), committed).values())


def test_only_user_errors_follow_on_error(tmp_path: Path) -> None:
    """Expressions, declared functions (also as partitioners) and decoding are the user's."""
    svc = Service(tmp_path, """
    kind: microservice
    name: s
    functions: {check: {python: "fns:check"}, pick: {python: "fns:pick"}}
    streams: {in: {on_error: skip}, out: {partitions: 2}}
    pipelines:
      p:
        from: in
        on_error: skip
        steps:
          - map_values: "check(value)"
          - repartition: {to: out, partitioner: {function: pick}}
    """, {"fns.py": """
    def check(value):
        if value == 3:
            raise RuntimeError("three is not allowed")
        return value

    def pick(key, value, partitions):
        return 1 // (value - 4)  # ZeroDivisionError for 4, -1 (out of range) below 4
    """})
    out = svc.run({"in": [("a", 5), ("b", b"{not json"), ("c", 3), ("d", 4), ("e", 2), ("f", 6)]}, read="out")
    assert sorted(out) == [("a", 5), ("f", 6)]
    assert svc.stats.skipped == 4


# -- the processor contract, over every processor -------------------------------------------------
# A step's batch path either returns the whole result or fails before anything it did shows; the
# per-event replay then applies the error policy to exactly the failing event. So a batch with
# one failing event, under `skip`, must give exactly what the same inputs without that event
# give. Each case makes one event fail inside one kind of processor: an expression error
# (`10 / value.n` with n = 0) or a key too long for the step's store.

LONG = "k" * 600
BAD_N = {"n": 0}
CONTRACT_HEADER = """
kind: microservice
name: c
streams:
  in: {}
  in2: {}
  users: {type: entity, on_error: skip}
  profiles: {type: entity, on_error: skip}
  countries: {type: entity}
  out: {}
"""
# name -> (covers operators/processors, body, before inputs, batch inputs, the bad event)
CASES: dict[str, tuple[set[str], str, dict, dict, tuple]] = {}


def case(name: str, covers: set[str], body: str, batch: dict, bad: tuple, before: dict | None = None) -> None:
    CASES[name] = (covers, body, before or {}, batch, bad)


def _events(n: int = 4, key: str = "a") -> list[tuple]:
    return [(key if i % 2 == 0 else "b", {"n": i + 1}, 1_000 + 10 * i) for i in range(n)]


def _pipeline(steps: str, to: str = "to: out", source: str = "in") -> str:
    return f"""
pipelines:
  p:
    from: {source}
    on_error: skip
    steps: {steps}
    {to}
"""


EXPR = "10 / value.n"
case("filter", {"filter"}, _pipeline(f'[{{filter: "{EXPR} > 4"}}]'), {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("filter_not", {"filter_not"}, _pipeline(f'[{{filter_not: "{EXPR} > 4"}}]'), {"in": _events()},
     ("in", "a", BAD_N, 1_005))
case("map", {"map"}, _pipeline(f'[{{map: {{key: "key ~ 1", value: "{EXPR}"}}}}]'), {"in": _events()},
     ("in", "a", BAD_N, 1_005))
case("map_values", {"map_values"}, _pipeline(f'[{{map_values: "{EXPR}"}}]'), {"in": _events()},
     ("in", "a", BAD_N, 1_005))
case("select_key", {"select_key"}, _pipeline(f'[{{select_key: "key ~ {EXPR}"}}]'), {"in": _events()},
     ("in", "a", BAD_N, 1_005))
case("flat_map", {"flat_map"}, _pipeline(f'[{{flat_map: "[[key, {EXPR}], [key, 1]]"}}]'), {"in": _events()},
     ("in", "a", BAD_N, 1_005))
case("flat_map_values", {"flat_map_values"}, _pipeline(f'[{{flat_map_values: "[{EXPR}, 1]"}}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("merge, peek, log", {"merge", "peek", "log"},
     _pipeline(f'[{{merge: in2}}, {{peek: "{EXPR}"}}, {{log: {{message: "key ~ {EXPR}"}}}}]'),
     {"in": _events(), "in2": _events()}, ("in", "a", BAD_N, 1_005))
case("repartition", {"repartition"}, _pipeline(f'[{{repartition: {{name: r, partitions: 2, key: "key ~ {EXPR}"}}}}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("group_by, count", {"group_by", "count"},
     "stores: {kv: {type: key_value}}"
     + _pipeline(f'[{{group_by: {{key: "key ~ {EXPR}", name: g}}}}, {{count: {{store: kv}}}}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("group_by_key, count", {"group_by_key", "count"},
     "stores: {kv: {type: key_value}}" + _pipeline('[{group_by_key: {}}, {count: {store: kv}}]'),
     {"in": _events()}, ("in", LONG, {"n": 5}, 1_005))
case("reduce", {"reduce"},
     "stores: {kv: {type: key_value}}"
     + _pipeline("""[{group_by_key: {}}, {reduce: {store: kv, reducer: "{'n': aggregate.n + value.n}"}}]"""),
     {"in": _events()}, ("in", LONG, {"n": 5}, 1_005))
case("aggregate", {"aggregate"},
     "stores: {kv: {type: key_value}}" + _pipeline(
         '[{group_by_key: {}}, {aggregate: {store: kv, initializer: "0", aggregator: "aggregate + value.n"}}]'),
     {"in": _events()}, ("in", LONG, {"n": 5}, 1_005))
for kind, extra in [("tumbling", "size: 100"), ("hopping", "size: 100, advance: 50"), ("sliding", "size: 100")]:
    case(f"window {kind}", {"window"},
         "stores: {w: {type: window}}" + _pipeline(
             f'[{{group_by_key: {{}}}}, {{window: {{type: {kind}, {extra}, grace: 1000}}}}, {{count: {{store: w}}}}]'),
         {"in": _events()}, ("in", LONG, {"n": 5}, 1_005))
case("window session", {"window"},
     "stores: {s: {type: session}}" + _pipeline(
         '[{group_by_key: {}}, {window: {type: session, gap: 15, grace: 1000}}, '
         '{aggregate: {store: s, initializer: "0", aggregator: "aggregate + value.n", merger: "aggregate + other"}}]'),
     {"in": _events()}, ("in", LONG, {"n": 5}, 1_005))
case("window emit final", {"window"},
     "stores: {w: {type: window}}" + _pipeline(
         '[{group_by_key: {}}, {window: {type: tumbling, size: 10, emit: final}}, {count: {store: w}}]'),
     {"in": _events(6)}, ("in", LONG, {"n": 5}, 1_005))
case("join stream-table", {"join", "table"},
     "tables: {users-table: {from: users}}" + _pipeline(
         f'[{{join: {{table: users-table, kind: left, value: "[value, other, {EXPR}]"}}}}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005), before={"users": [("a", {"name": "A"}, 1)]})
case("join global table", {"join"},
     "global_tables: {g: {from: countries}}" + _pipeline(
         f'[{{join: {{global_table: g, key: "key", kind: left, value: "[value, other, {EXPR}]"}}}}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005), before={"countries": [("a", {"name": "A"}, 1)]})
case("join stream-stream", {"join"},
     _pipeline('[{join: {stream: in2, name: j, within: 100, grace: 1000, kind: outer, value: "[value, other]"}}]'),
     {"in": _events(), "in2": _events()}, ("in", LONG, {"n": 5}, 1_005))
case("join table-table", {"join", "table"},
     "tables: {users-table: {from: users}, profiles-table: {from: profiles}}" + _pipeline(
         '[{join: {table: profiles-table, kind: outer, value: "[value, other]"}}]', source="users-table"),
     {"users": _events(), "profiles": _events()}, ("users", LONG, {"n": 5}, 1_005))
case("table aggregation with a subtractor", {"table", "group_by", "aggregate"},
     "stores: {kv: {type: key_value}}\ntables: {users-table: {from: users}}" + _pipeline(
         '[{group_by: {key: "value.c", name: by-c}}, {aggregate: {store: kv, initializer: "0", '
         'adder: "aggregate + 1", subtractor: "aggregate - 1"}}]', source="users-table"),
     {"users": [("u1", {"c": "fr"}, 10), ("u2", {"c": "fr"}, 11), ("u1", {"c": "de"}, 12)]},
     ("users", LONG, {"c": "fr"}, 11), before={"users": [("u1", {"c": "xx"}, 1), ("u2", {"c": "xx"}, 2)]})
case("branch", {"branch"}, f"""
pipelines:
  p:
    from: in
    on_error: skip
    branch:
      - {{when: "{EXPR} > 4", steps: [{{map_values: "'big'"}}], to: out}}
      - {{otherwise: true, to: out}}
""", {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("to select", {"to"}, _pipeline("[]", to=f'to: {{select: "\'out\' if {EXPR} else \'in2\'", streams: [out, in2]}}'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005))
case("call", {"call"},
     _pipeline(f'[{{call: {{url: "\'{{api}}/items/\' ~ key ~ ({EXPR})", into: r}}}}, '
               '{map_values: "{\'n\': value.n, \'status\': value.r.status}"}]'),
     {"in": _events()}, ("in", "a", BAD_N, 1_005))  # {api}: a real test API (tests/helpers/fake_api.py)


def test_the_contract_cases_cover_every_processor() -> None:
    from edm_runner.operators.registry import operators

    covered = set().union(*(c[0] for c in CASES.values()))
    assert set(operators()) | {"table", "branch", "to"} <= covered


def _with_bad(batch: dict, bad: tuple) -> dict:
    stream, key, value, ts = bad
    events = sorted([*batch.get(stream, []), (key, value, ts)], key=lambda e: e[2])
    return {**batch, stream: events}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_failing_event_leaves_the_batch_as_if_it_had_not_been_there(tmp_path: Path, name: str) -> None:
    covers, body, before, batch, bad = CASES[name]
    results = []
    api = FakeApi().start_in_thread() if "{api}" in body else None
    try:
        for run, inputs in (("with", _with_bad(batch, bad)), ("without", batch)):
            svc = Service(tmp_path / run, CONTRACT_HEADER + body.replace("{api}", api.url if api else ""))
            if before:
                svc.run(before)
            results.append((svc.run(inputs), svc.stats.skipped))
    finally:
        if api is not None:
            api.stop_thread()
    (with_bad, skipped), (without, skipped_without) = results
    assert skipped >= 1 and skipped_without == 0
    assert with_bad == without


FIRST_TIME = {"rules.py": """
def first_time(key, payment_id, *, stores):
    seen = stores["seen"]
    ids = seen.get(key) or []
    if payment_id in ids:
        return False
    seen.put(key, ids + [payment_id])
    return True
"""}
CHECK = "first_time(key, value.id) and 10 / value.n > 0"


@pytest.mark.parametrize("flow", [
    f"steps: [{{filter: '{CHECK}'}}]\n    to: out",
    f"branch: [{{when: '{CHECK}', to: out}}]",
])
def test_a_function_with_stores_writes_once_per_event_when_another_event_fails(tmp_path: Path, flow: str) -> None:
    """The replay of a batch after a failure called the function again for the events before
    the failing one: their ids were seen already, and the first payment was dropped."""
    body = f"""
stores: {{seen: {{type: key_value}}}}
functions: {{first_time: {{python: "rules:first_time", stores: [seen]}}}}
pipelines:
  p:
    from: in
    on_error: skip
    {flow}
"""
    good = [("a", {"id": 1, "n": 1}, 1), ("a", {"id": 1, "n": 1}, 2), ("a", {"id": 3, "n": 1}, 4)]
    results = []
    for run, events in (("with", [*good[:2], ("a", {"id": 2, "n": 0}, 3), good[2]]), ("without", good)):
        (tmp_path / run).mkdir()
        svc = Service(tmp_path / run, CONTRACT_HEADER + body, FIRST_TIME)
        results.append((svc.run({"in": events}), svc.stats.skipped))
    (with_bad, skipped), (without, skipped_without) = results
    assert (skipped, skipped_without) == (1, 0)
    assert with_bad == without == [("a", {"id": 1, "n": 1}), ("a", {"id": 3, "n": 1})]


# -- records of a global table that fail follow the stream's on_error -------------------------------

GLOBAL = """
kind: microservice
name: "{p}g"
streams:
  in: {topic: "{p}in"}
  countries: {topic: "{p}countries", type: entity, on_error: POLICY}
  dlq: {topic: "{p}dlq", key: bytes, value: bytes}
  out: {topic: "{p}out"}
global_tables: {g: {from: countries}}
pipelines:
  p:
    from: in
    steps: [{join: {global_table: g, key: "key", kind: left, value: "other"}}]
    to: out
"""
COUNTRIES = [("fr", {"name": "France"}), ("xx", b"{not json"), (LONG, {"name": "long"}), ("de", {"name": "Germany"})]
LOOKUPS = [("fr", 1), ("xx", 2), ("de", 3)]


def test_global_table_records_that_fail_are_skipped_and_counted(tmp_path: Path, broker_url: str) -> None:
    svc = Service(tmp_path, GLOBAL.replace("POLICY", "skip"), url=broker_url)
    assert svc.run({"countries": COUNTRIES, "in": LOOKUPS}) == [
        ("fr", {"name": "France"}), ("xx", None), ("de", {"name": "Germany"})]
    assert svc.stats.skipped == 2


def test_global_table_records_that_fail_are_dead_lettered(tmp_path: Path, broker_url: str) -> None:
    svc = Service(tmp_path, GLOBAL.replace("POLICY", "{dead_letter: dlq}"), url=broker_url)
    svc.run({"countries": COUNTRIES, "in": LOOKUPS})
    assert svc.stats.dead_lettered == 2
    records = svc.records("{p}dlq")
    assert [r.value for r in records] == [b"{not json", j({"name": "long"})]
    errors = [error_of(r) for r in records]
    assert "invalid JSON" in errors[0] and "exceeds LMDB's limit" in errors[1]


def test_a_global_table_record_that_fails_under_fail_stops_the_service(tmp_path: Path) -> None:
    from edm_runner.errors import ProcessingError

    svc = Service(tmp_path, GLOBAL.replace("POLICY", "fail"))
    with pytest.raises(ProcessingError, match=r"global table g \(decode\).*invalid JSON(.|\n)*on stream 'countries'"):
        svc.run({"countries": COUNTRIES, "in": LOOKUPS})


def test_a_table_restored_on_a_new_machine_skips_what_its_stream_skipped(tmp_path: Path) -> None:
    import shutil

    svc = Service(tmp_path, """
    kind: microservice
    name: t
    streams:
      in: {}
      users: {type: entity, on_error: skip}
      out: {}
    tables: {users-table: {from: users}}
    pipelines:
      p: {from: in, steps: [{join: {table: users-table, kind: left, value: "other"}}], to: out}
    """)
    users = [("u1", {"name": "A"}), ("u2", b"{not json"), (LONG, {"name": "long"}), ("u3", {"name": "C"})]
    svc.run({"users": users})
    assert svc.stats.skipped == 2
    shutil.rmtree(svc.state_dir)  # a new machine: the table is restored from its stream
    out = svc.run({"in": [("u1", 1), ("u2", 2), ("u3", 3)]})
    assert out == [("u1", {"name": "A"}), ("u2", None), ("u3", {"name": "C"})]
    assert svc.stats.skipped == 0  # counted once, when the records were processed


# -- an incompatible store change is refused from the changelog itself ------------------------------

def _counting(step: str, store: str = "stats: {type: key_value}") -> str:
    return f"""
    kind: microservice
    name: "{{p}}c"
    streams: {{in: {{topic: "{{p}}in"}}, out: {{topic: "{{p}}out"}}}}
    stores: {{{store}}}
    pipelines:
      p: {{from: in, steps: [{{group_by_key: {{}}}}, {step}], to: out}}
    """


@pytest.mark.parametrize("before, after, store, change", [
    ("{count: {store: stats}}", '{aggregate: {store: stats, initializer: "0", aggregator: "aggregate + value"}}',
     "stats: {type: key_value}", 'aggregation "count" -> "aggregate"'),
    ("{window: {type: tumbling, size: 100}}, {count: {store: stats}}",
     "{window: {type: tumbling, size: 200}}, {count: {store: stats}}",
     "stats: {type: window}", "advance 100 -> 200, size 100 -> 200"),
])
def test_a_new_machine_refuses_an_incompatible_store_change_as_an_old_one_does(
        tmp_path: Path, broker_url: str, before: str, after: str, store: str, change: str) -> None:
    import shutil

    from edm_runner.state import IncompatibleStoreError

    svc = Service(tmp_path, _counting(before, store), url=broker_url)
    first = svc.run({"in": [("a", 1, 10), ("b", 1, 20), ("a", 1, 30)]})
    shutil.rmtree(svc.state_dir)
    assert svc.run({"in": [("a", 1, 40)]})[len(first):] == [first[-1][:1] + (
        first[-1][1] + 1 if isinstance(first[-1][1], int) else {**first[-1][1], "value": 3},)]

    svc.write(_counting(after, store))
    shutil.rmtree(svc.state_dir)  # a new pod
    with pytest.raises(IncompatibleStoreError) as new_machine:
        svc.run({"in": [("a", 1, 50)]})
    message = str(new_machine.value)
    assert f"store 'stats' changed since its changelog {svc.p}c-stats-changelog (partition 0, offset" in message
    assert change in message
    assert "run `edm reset" in message and "give the store a new name" in message

    svc.write(_counting(before, store))  # the old pod: the same refusal, from its local state
    svc.run({})
    svc.write(_counting(after, store))
    with pytest.raises(IncompatibleStoreError, match=change):
        svc.run({})


def test_every_changelog_record_names_its_store_definition(tmp_path: Path) -> None:
    """Compaction keeps the latest record per key: each one must carry the fingerprint."""
    from edm_runner.state.task import fingerprint

    svc = Service(tmp_path, _counting("{count: {store: stats}}"))
    svc.run({"in": [("a", 1), ("b", 1), ("a", 1), ("c", 1)]})
    records = svc.records("{p}c-stats-changelog")
    expected = fingerprint("key_value", {"aggregation": "count"}).encode()
    assert records and all(r.headers[0] == ("edm.store", expected) for r in records)
    described = [dict(r.headers)["edm.store.definition"] for r in records if len(r.headers) > 1]
    assert described and set(described) == {b'{"params":{"aggregation":"count"},"type":"key_value"}'}


# -- a null key and an entity stream ---------------------------------------------------------

def test_a_null_key_written_to_an_entity_stream_is_an_error_of_the_event(tmp_path: Path,
                                                                           broker_url: str) -> None:
    """Kafka refuses a record without a key on a compacted topic (the producer failed with
    `UnknownError` and the service crash-looped past its on_error); the embedded broker kept
    it. On both, the event now follows on_error."""
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}n"
    streams:
      in: {topic: "{p}in"}
      ents: {topic: "{p}ents", type: entity}
      dlq: {topic: "{p}dlq", key: bytes, value: bytes}
    pipelines:
      p: {from: in, steps: [{select_key: value.id}], to: ents, on_error: {dead_letter: dlq}}
    """, url=broker_url)
    out = svc.run({"in": [("a", {"id": "x1"}), ("b", {}), ("c", {"id": "x2"})]}, read="ents")
    assert out == [("x1", {"id": "x1"}), ("x2", {"id": "x2"})]
    assert svc.service.dead_lettered == 1
    dead = svc.records("{p}dlq")
    assert [r.key for r in dead] == [b"b"]
    assert "a null key cannot be written to an entity stream" in error_of(dead[0])


def test_edm_produce_refuses_a_null_key_on_an_entity_stream(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("kind: microservice\nname: n\nstreams: {ents: {type: entity}}\n")
    done = edm("produce", "ents", "-t", tmp_path / "t.yaml",
               stdin='{"key": "k", "value": 1}\n{"key": null, "value": 2}\n', timeout=60)
    assert done.code == 1
    assert done.stderr.startswith("edm: <stdin>:2:1: a null key cannot be written to an entity stream")


def test_the_cli_reports_an_internal_error_as_one_to_report(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from edm_runner.cli.common import guarded as _run_guarded
    from edm_runner.errors import InternalError

    def fail() -> None:
        raise InternalError("service 's': step p.steps[0] (x) at f:1:1 failed with AttributeError: boom. "
                            "This is a bug in edm, not in the topology or the data")
    with pytest.raises(typer.Exit) as info:
        _run_guarded(fail)
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("edm: internal error: service 's': step p.steps[0]") and "InternalError" not in err
    assert "please report it" in err


# -- the string format takes only strings ------------------------------------------------------

def test_a_non_string_written_in_format_string_is_an_error_of_the_event(tmp_path: Path) -> None:
    """`string` converted silently: group keys 1 and "1" became one output key "1", True "True".
    Only str is written; the rest follows on_error, and `| string` converts explicitly."""
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}s"
    streams:
      in: {topic: "{p}in"}
      out: {topic: "{p}out", key: string}
      dlq: {topic: "{p}dlq", key: bytes, value: bytes}
    stores: {kv: {type: key_value}}
    pipelines:
      p:
        from: in
        steps: [{group_by: {key: "value.g", name: g}}, {count: {store: kv}}]
        to: out
        on_error: {dead_letter: dlq}
    """)
    out = svc.run({"in": [("a", {"g": 1}), ("b", {"g": "1"}), ("c", {"g": True}), ("d", {"g": "x"})]})
    assert out == [("1", 1), ("x", 1)]
    dead = svc.records("{p}dlq")
    assert [r.key for r in dead] == [b"1", b"true"]  # the records of the group_by's topic
    assert "cannot encode int 1 in format string" in error_of(dead[0])
    assert "cannot encode bool True in format string" in error_of(dead[1])


# -- event times past 64 bits ----------------------------------------------------------------

def test_an_event_time_past_year_9999_is_an_error_of_the_event(tmp_path: Path, broker_url: str) -> None:
    """A `time:` of 1e20 stopped the service with an internal error (int too large to convert, a
    crash loop); a record timestamp of 2**63-1 emitted a window end past 64 bits. Both are now
    errors of their event (on_error: skip), and the other events are windowed as before. Kafka 4
    refuses a record timestamp that far ahead itself (InvalidTimestampError, its
    log.message.timestamp.after.max.ms), so there the second event has an ordinary one. On the
    embedded broker the same bound refuses the output record that carries that timestamp (an
    error of the event after the window counted it: the count goes on from 2)."""
    far = 2**63 - 1 if broker_url.startswith("local:") else 2000
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}w"
    streams:
      in: {topic: "{p}in"}
      by_value: {topic: "{p}by-value"}
      by_record: {topic: "{p}by-record"}
    stores:
      v: {type: window}
      r: {type: window}
    pipelines:
      value_time:
        from: in
        steps: [{group_by_key: {}}, {window: {type: tumbling, size: 1h, time: value.ts}}, {count: {store: v}}]
        to: by_value
        on_error: skip
      record_time:
        from: in
        steps: [{group_by_key: {}}, {window: {type: tumbling, size: 1h}}, {count: {store: r}}]
        to: by_record
        on_error: skip
    """, url=broker_url)
    hour = 3_600_000
    out = svc.run({"in": [("a", {"ts": 10**20}, 1000), ("a", {"ts": 2000}, far), ("a", {"ts": 3000}, 3000)]},
                  read="by_value")
    assert out == [("a", {"start": 0, "end": hour, "value": n}) for n in ([2] if far != 2000 else [1, 2])]
    by_record = svc.records("{p}by-record")
    counts = [json.loads(r.value)["value"] for r in by_record]
    assert counts == ([1, 2] if far != 2000 else [1, 2, 3])
    assert svc.stats.skipped == (3 if far != 2000 else 1)


# -- one record size limit, on every broker ----------------------------------------------------

CHUNK = "x" * 300_000


def test_an_aggregate_that_outgrows_the_record_size_limit_is_an_error_of_the_event(tmp_path: Path,
                                                                                   broker_url: str) -> None:
    """A list an aggregate appends to passed Kafka's 1 MiB message limit: every run exited with
    MessageSizeTooLargeError past on_error (a crash loop); the embedded broker kept the record.
    The changelog record is refused where the store encodes it, as an error of the event."""
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}a"
    processing: {expression_limits: {max_string_length: 10000000}}
    streams:
      in: {topic: "{p}in"}
      out: {topic: "{p}out"}
      dlq: {topic: "{p}dlq", key: bytes, value: bytes}
    stores: {acc: {type: key_value}}
    pipelines:
      p:
        from: in
        steps:
          - group_by_key: {}
          - aggregate: {store: acc, initializer: "[]", aggregator: "aggregate + [value.s]"}
          - map_values: "value | length"
        to: out
        on_error: {dead_letter: dlq}
    """, url=broker_url)
    out = svc.run({"in": [("a", {"s": CHUNK})] * 4 + [("b", {"s": "y"})]})
    assert out == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert svc.service.dead_lettered == 1
    dead = svc.records("{p}dlq")
    assert [r.key for r in dead] == [b"a"]
    error = error_of(dead[0])
    assert "store 'acc': the changelog record of key b'\"a\"' is 1200016 bytes" in error
    assert "above the record size limit of 1000000 bytes" in error
    assert svc.run({"in": [("a", {"s": "z"})]})[-1] == ("a", 4)  # the store kept 3 chunks


def test_an_event_that_fails_after_a_store_write_leaves_no_write_behind(tmp_path: Path, broker_url: str) -> None:
    """An event bridging two sessions deletes both, then fails to put their merged aggregate
    (above the record size limit). Its deletes stayed in the write buffer: the replay of the
    event found no session to merge and succeeded as a new session, and the next event
    started yet another. The buffer rolls an event's writes back with it."""
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}s"
    processing: {expression_limits: {max_string_length: 10000000}}
    streams:
      in: {topic: "{p}in"}
      out: {topic: "{p}out"}
      dlq: {topic: "{p}dlq", key: bytes, value: bytes}
    stores: {acc: {type: session}}
    pipelines:
      p:
        from: in
        steps:
          - group_by_key: {}
          - window: {type: session, gap: 100, grace: 1000}
          - aggregate: {store: acc, initializer: "[]", aggregator: "aggregate + [value.s]",
                        merger: "aggregate + other"}
          - map_values: "[value.start, value.end, value.value | length if value.value is not none else 0]"
        to: out
        on_error: {dead_letter: dlq}
    """, url=broker_url)
    out = svc.run({"in": [("a", {"s": CHUNK}, 0), ("a", {"s": CHUNK}, 10), ("a", {"s": CHUNK}, 200),
                          ("a", {"s": CHUNK}, 210), ("a", {"s": "y"}, 100), ("a", {"s": "z"}, 300)]})
    # (merged-away sessions are emitted with a null aggregate: length 0 here)
    assert out == [("a", [0, 0, 1]), ("a", [0, 0, 0]), ("a", [0, 10, 2]), ("a", [200, 200, 1]), ("a", [200, 200, 0]),
                   ("a", [200, 210, 2]), ("a", [200, 210, 0]), ("a", [200, 300, 3])]
    assert svc.service.dead_lettered == 1


def test_an_output_record_above_the_limit_is_an_error_of_the_event(tmp_path: Path, broker_url: str) -> None:
    svc = Service(tmp_path, """
    kind: microservice
    name: "{p}o"
    processing: {expression_limits: {max_string_length: 10000000}}
    streams: {in: {topic: "{p}in"}, out: {topic: "{p}out"}}
    pipelines:
      p: {from: in, steps: [{map_values: "value.s * value.n"}], to: out, on_error: skip}
    """, url=broker_url)
    out = svc.run({"in": [("a", {"s": CHUNK, "n": 3}), ("b", {"s": CHUNK, "n": 4}), ("c", {"s": "y", "n": 1})]})
    assert [(k, len(v)) for k, v in out] == [("a", 900_000), ("c", 1)]
    assert svc.stats.skipped == 1


def test_edm_produce_refuses_a_record_above_the_limit(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("kind: microservice\nname: n\nstreams: {s: {}}\n")
    lines = json.dumps({"key": "k", "value": "small"}) + "\n" + json.dumps({"key": "k", "value": "v" * 2_000_000})
    done = edm("produce", "s", "-t", tmp_path / "t.yaml", "--state-dir", tmp_path / "state", stdin=lines + "\n",
               timeout=60)
    assert done.code == 1
    assert done.stderr.startswith("edm: <stdin>:2:1: the record is 2000003 bytes (key 1, value 2000002), above "
                                  "the record size limit of 1000000 bytes")
    assert "inputs" not in done.stderr


# -- one record timestamp bound, on every broker ---------------------------------------------------

MINUTE = 60_000

FUTURE_WINDOWS = """
kind: microservice
name: "{p}f"
streams:
  in: {topic: "{p}in"}
  out: {topic: "{p}out"%s}
  dlq: {topic: "{p}dlq", key: bytes, value: bytes}
stores: {w: {type: window}}
pipelines:
  p:
    from: in
    steps:
      - group_by_key: {}
      - window: {type: tumbling, size: 1m, emit: final, time: value.ts}
      - count: {store: w}
    to: out
    on_error: {dead_letter: dlq}
"""


def _future_run(svc: Service) -> tuple[list[tuple[Any, Any]], int, int]:
    """Two windows in the past, then two event times two days ahead: the second closes the
    window of the first, whose result carries the window end (two days ahead) as timestamp."""
    now = time.time_ns() // 1_000_000
    past, future = (now - 3 * 3_600_000) // MINUTE * MINUTE, (now + 2 * 86_400_000) // MINUTE * MINUTE
    out = svc.run({"in": [("a", {"ts": past}), ("a", {"ts": past + 2 * MINUTE}), ("a", {"ts": future}),
                          ("a", {"ts": future + 2 * MINUTE})]})
    return out, past, future


def test_a_window_result_dated_past_the_topic_bound_is_an_error_of_the_event(tmp_path: Path,
                                                                              broker_url: str) -> None:
    """Kafka 4 refuses a record timestamp more than message.timestamp.after.max.ms (1 h) ahead of
    its clock: a window over a future event time (emit final: the window end is the record
    timestamp) failed the whole batch with InvalidTimestampError past on_error, and every restart
    met it again (a crash loop); the embedded broker kept the record. Now the record is refused
    where it is written, as an error of the event that closed the window, on both brokers."""
    svc = Service(tmp_path, FUTURE_WINDOWS % "", url=broker_url)
    out, past, future = _future_run(svc)
    assert out == [("a", {"start": past, "end": past + MINUTE, "value": 1}),
                   ("a", {"start": past + 2 * MINUTE, "end": past + 3 * MINUTE, "value": 1})]
    assert svc.service.dead_lettered == 1
    dead = svc.records("{p}dlq")
    assert [json.loads(r.value)["ts"] for r in dead] == [future + 2 * MINUTE]
    error = error_of(dead[0])
    assert error.startswith(f"RecordTimestampError: a record for '{svc.p}out' has timestamp {future + MINUTE - 1} ms")
    assert "past the topic's message.timestamp.after.max.ms of 3600000 ms" in error
    assert "raise message.timestamp.after.max.ms on the topic" in error
    assert svc.run({}) == out  # committed: a new run does not meet the event again
    assert svc.service.dead_lettered == 0


@pytest.mark.kafka
def test_a_topic_with_a_raised_timestamp_bound_takes_the_future_window(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The bound is the topic's own on Kafka (read when the service starts), not only the default."""
    svc = Service(tmp_path, FUTURE_WINDOWS % ', config: {"message.timestamp.after.max.ms": "259200000"}',
                  url="kafka://" + kafka_bootstrap)
    out, past, future = _future_run(svc)
    assert out[-1] == ("a", {"start": future, "end": future + MINUTE, "value": 1})
    assert svc.service.dead_lettered == 0


# -- a null key on a table's source: one rule when processed and when restored ---------------------

NULL_KEY_TABLE = """
kind: microservice
name: t
streams:
  in: {}
  users: {type: entity, on_error: skip}
  out: {}
  changes: {}
tables: {users-table: {from: users}}
global_tables: {users-global: {from: users}}
pipelines:
  p: {from: in, steps: [{join: {table: users-table, kind: left, value: "other"}}], to: out}
  g: {from: in, steps: [{join: {global_table: users-global, key: key, kind: left, value: "other"}}], to: out}
  c: {from: users-table, to: changes}
"""


def test_a_null_key_on_a_table_source_is_an_error_of_the_record_when_processed_and_restored(tmp_path: Path) -> None:
    """A null key was stored under the key `null` when the table processed it, skipped uncounted
    on restore and by a global table: a new machine's table differed. Now it is an error of the
    record on every path, following the stream's on_error. (The embedded broker only: Kafka
    refuses a record without a key on a compacted topic.)"""
    import shutil

    from edm_runner.state.offline import open_readonly

    def table() -> list[tuple[Any, Any]]:
        with open_readonly(svc.state_dir, "t") as state:
            return sorted((e.key, e.value) for _, e in state.scan("users-table"))

    svc = Service(tmp_path, NULL_KEY_TABLE)
    svc.run({"users": [("u1", {"name": "A"}), (None, {"name": "nobody"}), ("u3", {"name": "C"})]})
    assert svc.stats.skipped == 2  # the table's record and the global table's
    assert svc.run({}, read="changes") == [("u1", {"name": "A"}), ("u3", {"name": "C"})]
    assert table() == [("u1", {"name": "A"}), ("u3", {"name": "C"})]
    shutil.rmtree(svc.state_dir)  # a new machine: both tables restored from the stream
    out = svc.run({"in": [("u1", 1), ("u3", 3)]})
    assert sorted(out) == [("u1", {"name": "A"}), ("u1", {"name": "A"}), ("u3", {"name": "C"}),
                           ("u3", {"name": "C"})]
    assert svc.stats.skipped == 1  # the global table counts what it skips each time it reads it
    assert table() == [("u1", {"name": "A"}), ("u3", {"name": "C"})]
