"""The stateful language: stores, tables, global tables and stateful steps load into the model;
durations parse; what is valid around tables and joins stays valid. (Mistakes are in the
invalid corpus, tests/invalid/.)"""
from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
import yaml

from edm_runner.errors import ConfigError, EdmError
from edm_runner.language import load_file, topology_schema
from edm_runner.language.durations import DurationError, parse_duration
from edm_runner.language.model import BusinessTopology, StoreSpec, TableSpec, Topology

STATEFUL = """\
kind: microservice
name: shop
streams:
  users: {type: entity, partitions: 4}
  accounts: {type: entity, partitions: 4}
  countries: {type: entity}
  orders: {partitions: 4}
  clicks: {partitions: 4}
  views: {partitions: 4}
  late-orders: {}
  out: {}
stores:
  counts: {type: key_value}
  per-country: {}
  biggest: {type: key_value, changelog: false}
  hourly: {type: window, retention: 2d}
  hopping: {type: window}
  sliding: {type: window, retention: 3600000}
  sessions: {type: session, retention: 1d}
tables:
  users-table: {from: users, description: Users by id.}
  accounts-table: {from: accounts}
global_tables:
  country-table: {from: countries}
pipelines:
  count-per-user:
    from: clicks
    steps:
      - group_by_key: {}
      - count: {store: counts}
    to: out
  users-per-country:
    from: users-table
    steps:
      - group_by: {key: value.country, name: by-country, partitions: 2}
      - aggregate: {store: per-country, initializer: "0", adder: "aggregate + 1", subtractor: "aggregate - 1"}
    to: out
  biggest-order:
    from: orders
    steps:
      - group_by: {key: value.customer, name: by-customer}
      - reduce: {store: biggest, reducer: "value if value.amount > aggregate.amount else aggregate"}
    to: out
  hourly-revenue:
    from: orders
    steps:
      - group_by_key: {}
      - window: {type: tumbling, size: 1h, grace: 10m, emit: final, late: {dead_letter: late-orders}}
      - aggregate: {store: hourly, initializer: "0", aggregator: "aggregate + value.amount"}
    to: out
  hopping-counts:
    from: orders
    steps:
      - group_by_key: {}
      - window: {type: hopping, size: 1h, advance: 15m, time: value.ts}
      - count: {store: hopping}
    to: out
  sliding-counts:
    from: clicks
    steps:
      - group_by_key: {}
      - window: {type: sliding, size: 30s}
      - count: {store: sliding}
    to: out
  click-sessions:
    from: clicks
    steps:
      - group_by_key: {}
      - window: {type: session, gap: 5m}
      - aggregate: {store: sessions, initializer: "0", aggregator: "aggregate + 1", merger: "aggregate + other"}
    to: out
  enrich:
    from: orders
    steps:
      - join: {table: users-table, kind: left, value: "{'order': value, 'user': other}"}
      - join: {global_table: country-table, key: value.user.country, value: "[value, other]"}
      - join: {stream: views, name: order-views, within: 5m, grace: 1m, kind: outer, value: "[value, other]"}
    to: out
  user-accounts:
    from: users-table
    steps:
      - join: {table: accounts-table, kind: outer, value: "[value, other]"}
    to: out
"""


def _load(tmp_path: Path, text: str, name: str = "topology.yaml") -> Topology:
    path = tmp_path / name
    path.write_text(text)
    topology = load_file(path, env={})
    assert isinstance(topology, Topology)
    return topology


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_file(path, env={})
    return [d.message for d in info.value.diagnostics]


def test_every_stateful_feature_loads_into_the_model(tmp_path: Path) -> None:
    t = _load(tmp_path, STATEFUL)
    assert t.stores["counts"] == StoreSpec("counts", "key_value", True, None, pos=t.stores["counts"].pos)
    assert (t.stores["per-country"].type, t.stores["per-country"].changelog) == ("key_value", True)
    assert t.stores["biggest"].changelog is False
    assert (t.stores["hourly"].type, t.stores["hourly"].retention_ms) == ("window", 2 * 86_400_000)
    assert t.stores["sliding"].retention_ms == 3_600_000
    assert (t.stores["sessions"].type, t.stores["sessions"].retention_ms) == ("session", 86_400_000)
    assert (t.stores["hourly"].pos.line, t.stores["hourly"].pos.col) == (16, 3)
    assert t.tables == {
        "users-table": TableSpec("users-table", "users", False, t.tables["users-table"].pos),
        "accounts-table": TableSpec("accounts-table", "accounts", False, t.tables["accounts-table"].pos)}
    assert (t.tables["users-table"].pos.line, t.tables["users-table"].pos.col) == (21, 3)
    assert t.global_tables == {
        "country-table": TableSpec("country-table", "countries", True, t.global_tables["country-table"].pos)}
    assert t.pipelines["users-per-country"].sources == ["users-table"]
    steps = t.pipelines["hourly-revenue"].steps
    assert [s.op for s in steps] == ["group_by_key", "window", "aggregate"]
    assert steps[1].config["size"] == "1h" and steps[1].config["late"] == {"dead_letter": "late-orders"}
    assert [s.config for s in t.pipelines["enrich"].steps][2]["name"] == "order-views"


def test_the_published_schema_accepts_the_stateful_file() -> None:
    errors = [e.message for e in Draft202012Validator(topology_schema()).iter_errors(yaml.safe_load(STATEFUL))]
    assert errors == []


@pytest.mark.parametrize("value, ms", [
    (0, 0), (250, 250), ("250ms", 250), ("30s", 30_000), ("15m", 900_000), ("1h", 3_600_000),
    ("2d", 172_800_000), ("0s", 0)])
def test_parse_duration(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize("value, message", [
    ("1 hour", "'1 hour' is not a duration: use an integer of milliseconds or 250ms, 30s, 15m, 1h, 2d"),
    ("1.5h", "'1.5h' is not a duration"), ("-5s", "'-5s' is not a duration"), ("10", "'10' is not a duration"),
    (-1, "-1 is not a duration: it must not be negative"), (1.5, "1.5 is not a duration"),
    (True, "True is not a duration"), (None, "None is not a duration")])
def test_parse_duration_refuses_what_is_not_a_duration(value: object, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    assert message in str(info.value)
    assert isinstance(info.value, EdmError)


def test_a_stream_table_join_may_write_the_tables_stream(tmp_path: Path) -> None:
    # the table's changes never trigger the join, so this is not a consumption cycle
    _load(tmp_path, """\
kind: microservice
name: svc
streams:
  users: {type: entity}
  logins: {}
tables:
  users-table: {from: users}
pipelines:
  p:
    from: logins
    steps:
      - join: {table: users-table, value: "other | default({})"}
    to: users
""")


def test_a_pipeline_reading_a_table_consumes_the_tables_stream(tmp_path: Path) -> None:
    assert _errors(tmp_path, """\
kind: microservice
name: svc
streams:
  users: {type: entity}
tables:
  users-table: {from: users}
pipelines:
  p:
    from: users-table
    to: users
""") == ["pipeline 'p' would consume its own output: it writes stream 'users' and reads it"]


def test_group_by_partitions_default_to_the_sources_for_copartitioning(tmp_path: Path) -> None:
    text = """\
kind: microservice
name: shop
streams:
  users: {type: entity, partitions: 4}
  orders: {partitions: 4}
  out: {}
tables:
  users-table: {from: users}
stores:
  counts: {}
pipelines:
  totals:
    from: orders
    steps:
      - group_by: {key: value.user, name: by-user%s}
      - count: {store: counts}
      - join: {table: users-table, value: "[value, other]"}
    to: out
"""
    _load(tmp_path, text % "")
    assert _errors(tmp_path, text % ", partitions: 3") == [
        "join is not copartitioned: repartition topic 'shop-by-user-repartition' has 3 partitions "
        "but table 'users-table' (stream 'users') has 4 partitions"]


def test_branches_continue_the_pipelines_state(tmp_path: Path) -> None:
    text = """\
kind: microservice
name: svc
streams:
  events: {}
  a: {}
  b: {}
stores:
  big: {}
  small: {}
pipelines:
  p:
    from: events
    steps:
      - select_key: value.user
    branch:
      - when: value.big
        steps:
          - group_by: {key: key, name: big}
          - count: {store: big}
        to: a
      - otherwise: true
        steps:
          - group_by_key: {}
          - count: {store: small}
        to: b
"""
    assert _errors(tmp_path, text) == [
        "group_by_key after `select_key` (line 14): the key changed in this sub-topology, so events are "
        "not partitioned by it; use group_by"]


def test_internal_topics_of_a_service_may_be_read_by_nobody_else(tmp_path: Path) -> None:
    (tmp_path / "counter.yaml").write_text("""\
kind: microservice
name: counter
streams:
  events: {}
  counts-out: {}
stores:
  counts: {}
pipelines:
  count:
    from: events
    steps:
      - group_by: {key: value.user, name: by-user}
      - count: {store: counts}
    to: counts-out
""")
    (tmp_path / "reader.yaml").write_text("""\
kind: microservice
name: reader
streams:
  counts-out: {}
  audit: {}
pipelines:
  audit:
    from: counts-out
    to: audit
""")
    business = tmp_path / "biz.yaml"
    business.write_text("kind: business\nname: biz\nservices: [counter.yaml, reader.yaml]\n"
                        "external_streams: [events]\n")
    loaded = load_file(business, env={})
    assert isinstance(loaded, BusinessTopology)
    (tmp_path / "reader.yaml").write_text((tmp_path / "reader.yaml").read_text().replace(
        "  audit: {}\n", "  audit: {}\n  by-user: {topic: counter-by-user-repartition}\n").replace(
        "from: counts-out", "from: [counts-out, by-user]"))
    with pytest.raises(ConfigError) as info:
        load_file(business, env={})
    assert [(Path(d.file).name, d.line, d.message) for d in info.value.diagnostics] == [
        ("reader.yaml", 6, "topic 'counter-by-user-repartition' is internal to service 'counter' (the "
                           "repartition topic of group_by 'by-user'): internal topics are never shared "
                           "between services")]
