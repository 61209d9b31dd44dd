"""Loading valid topology files into the typed model, templating, and bad input as diagnostics."""
from __future__ import annotations

from pathlib import Path

import pytest

from edm_runner.errors import ConfigError
from edm_runner.language import load_file
from edm_runner.language.model import BusinessTopology, Pos, Topology
from edm_runner.language.yaml_loader import read_source

ROOT = Path(__file__).resolve().parent.parent

FULL = """\
kind: microservice
name: orders-svc
description: Everything the language has.
broker:
  kind: kafka
  bootstrap_servers: "{{ env.KAFKA | default('localhost:9092') }}"
  client_id: orders
  security: {protocol: SASL_SSL, sasl_mechanism: PLAIN, username: u, password: "{{ env.PW }}"}
processing: {guarantee: exactly_once, commit_interval_ms: 50, max_batch: 200}
streams:
  orders:
    partitions: "{{ env.P | default(3) }}"
    type: keyed
    key: string
    value: {format: json, schema: schemas/order.json}
    on_error: {dead_letter: orders-dlq}
  orders-dlq: {value: bytes}
  shop-orders: {topic: shop.orders, partitions: 3}
  by-customer: {partitions: 6, type: entity, retention_ms: -1, config: {min.insync.replicas: "2"}}
  big: {}
  small: {}
  rest: {}
  extra: {}
functions:
  score: {python: "scoring:score"}
pipelines:
  main:
    from: [orders, shop-orders]
    steps:
      - merge: extra
      - filter: value.total > 0
      - map_values: "{'total': value.total, 'score': score(value)}"
      - repartition: {to: by-customer, key: value.customer, partitioner: round_robin}
    on_error: skip
    to:
      select: "'big' if value.total > 100 else 'small'"
      streams: [big, small]
  route:
    from: by-customer
    branch:
      - when: value.score > 5
        steps: [{log: {message: key, level: warning}}]
        to: big
      - otherwise: true
        to: rest
"""


def _write_full(tmp_path: Path) -> Path:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text('{"type": "object"}')
    (tmp_path / "scoring.py").write_text("def score(value):\n    return 1\n")
    path = tmp_path / "topology.yaml"
    path.write_text(FULL)
    return path


def test_a_full_microservice_becomes_the_typed_model(tmp_path: Path) -> None:
    path = _write_full(tmp_path)
    t = load_file(path, env={"PW": "secret"})
    assert isinstance(t, Topology)
    assert (t.name, t.description, t.source_file) == ("orders-svc", "Everything the language has.", path.resolve())
    assert t.broker.kind == "kafka"
    assert t.broker.options["bootstrap_servers"] == "localhost:9092"
    assert t.broker.options["security"]["password"] == "secret"
    assert (t.processing.guarantee, t.processing.commit_interval_ms, t.processing.max_batch) == \
        ("exactly_once", 50, 200)

    orders = t.streams["orders"]
    assert orders.partitions == 3  # a whole template re-typed as an int
    assert orders.topic == "orders" and orders.type == "keyed" and orders.key.format == "string"
    assert orders.value.schema == (tmp_path / "schemas" / "order.json").resolve()
    assert (orders.on_error.kind, orders.on_error.dead_letter) == ("dead_letter", "orders-dlq")
    assert orders.pos == Pos(str(path), 11, 3)
    assert t.streams["orders-dlq"].value.format == "bytes" and t.streams["orders-dlq"].key.format == "string"
    assert t.streams["shop-orders"].topic == "shop.orders"
    customers = t.streams["by-customer"]
    assert customers.compacted and customers.retention_ms == -1
    assert customers.config == {"min.insync.replicas": "2"}
    assert t.streams["big"].partitions == 1 and t.streams["big"].value.format == "json"
    assert t.functions["score"].python == "scoring:score"

    main = t.pipelines["main"]
    assert main.sources == ["orders", "shop-orders"]
    assert [s.op for s in main.steps] == ["merge", "filter", "map_values", "repartition"]
    assert main.steps[1].config == "value.total > 0" and main.steps[1].pos == Pos(str(path), 31, 9)
    assert main.steps[3].config["partitioner"] == "round_robin"
    assert main.on_error.kind == "skip"
    assert main.to.select.startswith("'big'") and main.to.targets() == ["big", "small"]
    route = t.pipelines["route"]
    assert route.to is None
    assert [b.when for b in route.branch] == ["value.score > 5", None]
    assert route.branch[0].steps[0].config == {"message": "key", "level": "warning"}
    assert [b.to.stream for b in route.branch] == ["big", "rest"]


def test_the_examples_load() -> None:
    for path in sorted(p for p in (ROOT / "topologies").glob("*/*.yaml") if not p.name.endswith(".test.yaml")):
        assert isinstance(load_file(path, env={}), (Topology, BusinessTopology)), path


def test_a_business_topology_loads_its_services() -> None:
    b = load_file(ROOT / "topologies" / "payroll" / "payroll.yaml", env={})
    assert isinstance(b, BusinessTopology)
    assert b.name == "payroll" and b.external_streams == ["timesheets"]
    assert [s.name for s in b.services] == ["payroll-calculation", "payments", "notifications"]
    assert all(s.source_file.is_absolute() and s.source_file.exists() for s in b.services)


@pytest.mark.parametrize("text, env, expected", [
    ('p: "{{ env.P | default(8) }}"', {}, 8),
    ('p: "{{ env.P | default(8) }}"', {"P": "12"}, 12),
    ('p: "{{ env.P }}"', {"P": "true"}, True),
    ("p: '{{ env.P }}'", {"P": "12"}, "12"),              # single-quoted: stays a string
    ('p: "n-{{ env.P }}"', {"P": "12"}, "n-12"),          # part of the text: a string
    ("p: host-{{ env.H }}:9092", {"H": "k1"}, "host-k1:9092"),
    ("p: value.name | upper", {}, "value.name | upper"),  # bare expressions are not rendered
])
def test_load_time_templating(tmp_path: Path, text: str, env: dict, expected: object) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text + "\n")
    source = read_source(path, env)
    assert source.diagnostics == []
    assert source.data == {"p": expected}


def test_templates_see_the_process_environment_by_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDM_TEST_NAME", "from-env")
    path = tmp_path / "t.yaml"
    path.write_text('kind: microservice\nname: "{{ env.EDM_TEST_NAME }}"\n')
    assert load_file(path).name == "from-env"
    with pytest.raises(ConfigError) as info:
        load_file(path, env={})
    assert "EDM_TEST_NAME" in str(info.value)


def test_positions_of_keys_and_values(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("a:\n  b: [1, {c: 'x'}]\n  on: yes\n")
    source = read_source(path, {})
    assert source.data == {"a": {"b": [1, {"c": "x"}], "on": True}}  # keys are literal text
    smap = source.smap
    assert (smap.key(("a", "b")).line, smap.key(("a", "b")).col) == (2, 3)
    assert (smap.value(("a", "b")).line, smap.value(("a", "b")).col) == (2, 6)
    assert (smap.value(("a", "b", 1, "c")).line, smap.value(("a", "b", 1, "c")).col) == (2, 14)
    assert (smap.key(("a", "b", 1, "c")).col, smap.key(("a", "on")).line) == (11, 3)
    assert smap.expression(("a", "b", 1, "c"), 1).col == 15  # inside the quotes


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "is a directory"),
    (lambda d: d / "absent.yaml", "file not found"),
])
def test_unreadable_inputs_are_diagnostics(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(make(tmp_path))
    assert len(info.value.diagnostics) == 1 and message in info.value.diagnostics[0].message


def test_no_code_never_imports_user_code(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(v):\n    return v\n")
    path = tmp_path / "t.yaml"
    path.write_text("kind: microservice\nname: svc\nfunctions:\n  f: {python: 'evil:f'}\n")
    with pytest.raises(ConfigError, match="--no-code refuses Python functions"):
        load_file(path, no_code=True)
    assert not marker.exists()
    assert load_file(path).functions["f"].python == "evil:f"
    assert marker.exists()


def test_a_user_module_that_raises_on_import_is_a_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    path = tmp_path / "t.yaml"
    path.write_text("kind: microservice\nname: svc\nfunctions:\n  f: {python: 'broken_mod:f'}\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    [d] = info.value.diagnostics
    assert (d.line, d.col) == (4, 15) and "boom" in d.message


def test_every_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("kind: microservice\nname: Bad Name\nstreams:\n  a: {partitions: 0, typ: keyed}\n"
                    "pipelines:\n  p: {from: x, steps: [{fliter: v}], to: a}\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    got = [(d.line, d.col) for d in info.value.diagnostics]
    assert got == [(2, 7), (4, 19), (4, 22), (6, 13), (6, 25)]


@pytest.mark.parametrize("template", [
    "{{ env.update({'X': 1}) or env }}", "{{ env }}", "{{ env | string }}", "{{ env | pprint }}",
    "{{ env | list }}", "{{ env | tojson }}", "{{ env.items() | list }}", "{{ env | dictsort }}",
    "{{ '%s' % env }}", "{{ '{}'.format(env) }}", "{{ [env] }}", "{{ env | join(',') }}",
    "{% for k in env %}{{ k }}{% endfor %}.x", "{{ env.__dict__ }}", "{{ env | attr('_vars') }}",
])
def test_no_template_shows_or_changes_the_environment(tmp_path: Path, template: str) -> None:
    env = {"DB_PASSWORD": "hunter2-secret", "X": "1"}
    path = tmp_path / "t.yaml"
    path.write_text(f'kind: microservice\nname: "{template}"\n')
    with pytest.raises(ConfigError) as info:
        load_file(path, env=env)
    shown = "\n".join(d.format() for d in info.value.diagnostics)
    assert "hunter2" not in shown and "DB_PASSWORD" not in shown, shown
    assert env == {"DB_PASSWORD": "hunter2-secret", "X": "1"}


def test_a_templated_listen_is_checked_once_rendered(tmp_path: Path) -> None:
    """The published schema accepts "{{ ... }}" in http.listen (files as written); what the
    template renders to is still checked as host:port."""
    path = tmp_path / "t.yaml"
    path.write_text('kind: microservice\nname: svc\nstreams: {a: {}}\n'
                    'http:\n  listen: "{{ env.LISTEN }}"\n')
    assert load_file(path, env={"LISTEN": "127.0.0.1:0"}).http is not None
    for rendered in ("nowhere", "{{ not:rendered"):
        with pytest.raises(ConfigError) as info:
            load_file(path, env={"LISTEN": rendered})
        assert f"t.yaml:5:11: invalid http.listen '{rendered}'" in str(info.value)
        assert "host:port" in str(info.value)
