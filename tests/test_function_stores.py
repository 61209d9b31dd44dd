"""Python functions that declare stores read and write them like operators do: per task,
changelogged, restored after the local state is lost."""
from __future__ import annotations

import shutil
from pathlib import Path

from cli_helpers import edm, ok

TOPOLOGY = """
kind: microservice
name: dedupe
streams:
  payments: {partitions: 2, key: string, value: json}
  unique-payments: {partitions: 2, key: string, value: json}
stores:
  seen: {type: key_value}
functions:
  first_time: {python: dedupe_rules:first_time, stores: [seen]}
pipelines:
  dedupe:
    from: payments
    steps:
      - filter: first_time(key, value.id)
    to: unique-payments
"""

RULES = '''
def first_time(key, payment_id, *, stores):
    """True the first time a payment id is seen for this key."""
    seen = stores["seen"]
    ids = seen.get(key) or []
    if payment_id in ids:
        return False
    seen.put(key, ids + [payment_id])
    return True
'''


def _produce(tmp_path: Path, topology: Path, ids: list[tuple[str, str]]) -> None:
    lines = "".join(f'{{"key": "{k}", "value": {{"id": "{i}"}}}}\n' for k, i in ids)
    ok("produce", "payments", "-t", topology, "--state-dir", tmp_path / "state", stdin=lines)


def test_a_function_keeps_state_in_its_declared_store_across_a_wiped_state_dir(tmp_path: Path) -> None:
    topology = tmp_path / "dedupe.yaml"
    topology.write_text(TOPOLOGY)
    (tmp_path / "dedupe_rules.py").write_text(RULES)
    state = tmp_path / "state"
    _produce(tmp_path, topology, [("a", "1"), ("b", "1"), ("a", "1"), ("a", "2"), ("b", "1")])
    ok("run", topology, "--until-idle", "--state-dir", state)

    shutil.rmtree(state / "state")  # local stores lost: restored from the changelog
    _produce(tmp_path, topology, [("a", "2"), ("b", "3"), ("a", "1")])
    ok("run", topology, "--until-idle", "--state-dir", state)

    out = ok("consume", "unique-payments", "-t", topology, "--state-dir", state, "--from-beginning").lines()
    assert sorted((e["key"], e["value"]["id"]) for e in out) == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "3")]
    stored = ok("state", "--state-dir", state, topology, "get", "seen", "a").lines()
    assert [line["value"] for line in stored] == [["1", "2"]]


def test_a_function_naming_an_undeclared_store_is_a_validation_error(tmp_path: Path) -> None:
    topology = tmp_path / "dedupe.yaml"
    topology.write_text(TOPOLOGY.replace("stores: [seen]", "stores: [sen]"))
    (tmp_path / "dedupe_rules.py").write_text(RULES)
    result = edm("validate", topology)
    assert result.code == 1
    assert "undefined store 'sen'" in result.stderr and "seen" in result.stderr
