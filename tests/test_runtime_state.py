"""The stateful runtime on the real local broker: tasks, restore, changelogs, checkpoints,
tables and global tables. The operators used here are small test operators registered for
each test, so these tests exercise the runtime (store binding, commit, restore) on their own."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edm_runner.brokers.base import OutRecord, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.operators import registry
from edm_runner.operators.registry import Operator, operators
from edm_runner.runtime import run_services
from edm_runner.runtime.copartition import CopartitionError
from edm_runner.operators.api import Event, Processor
from edm_runner.language.model import (PipelineSpec, SerdeSpec, StepSpec, StoreSpec, StreamSpec, TableSpec, ToSpec,
                                   Topology)
from edm_runner.state.task import TaskState, task_dir
from helpers.brokers import started

# -- test operators -------------------------------------------------------------------------


class _Count(Processor):
    label = "test_count"

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def process(self, batch: list[Event]) -> list[Event]:
        store = self.ref.get()
        for e in batch:
            n = (store.get(e.key) or 0) + 1
            store.put(e.key, n)
            e.value = n
        return batch


class _Lookup(Processor):
    """value -> {"value": value, "other": the table's value for key (or value[key_field])}."""

    label = "test_lookup"

    def __init__(self, ref: Any, key_field: str | None) -> None:
        self.ref = ref
        self.key_field = key_field

    def process(self, batch: list[Event]) -> list[Event]:
        table = self.ref.get()
        for e in batch:
            key = e.value[self.key_field] if self.key_field else e.key
            e.value = {"value": e.value, "other": table.get(key)}
        return batch


class _Changes(Processor):
    label = "test_changes"

    def process(self, batch: list[Event]) -> list[Event]:
        for e in batch:
            e.value = {"new": e.value, "old": e.old}
        return batch


class _TableCount(Processor):
    """Counts keys per group from group_by change records: +1 for a new value, -1 for an old."""

    label = "test_table_count"

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def process(self, batch: list[Event]) -> list[Event]:
        store = self.ref.get()
        for e in batch:
            n = (store.get(e.key) or 0) + (e.value is not None) - (e.old is not None)
            store.put(e.key, n)
            e.value = n
        return batch


_TEST_OPERATORS = [
    Operator("test_count", {}, lambda step, ctx: _Count(ctx.store(step.config["store"], "key_value", {}, step.pos))),
    Operator("test_lookup", {}, lambda step, ctx: _Lookup(ctx.table(step.config.get("table")
                                                                    or step.config["global_table"]),
                                                          step.config.get("key"))),
    Operator("test_changes", {}, lambda step, ctx: _Changes()),
    Operator("test_table_count", {}, lambda step, ctx: _TableCount(ctx.store(step.config["store"], "key_value", {}))),
]


@pytest.fixture(autouse=True)
def stub_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers the test operators for one test only (the schema must not see them)."""
    operators()  # the real ones first, so they never clash with these
    for op in _TEST_OPERATORS:
        monkeypatch.setitem(registry._OPERATORS, op.name, op)


# -- helpers --------------------------------------------------------------------------------


def _topology(tmp_path: Path, streams: dict[str, tuple[int, str]], pipelines: dict[str, tuple[list[str], list, str]],
              stores: dict[str, StoreSpec] | None = None, tables: dict[str, str] | None = None,
              global_tables: dict[str, str] | None = None) -> Topology:
    """streams: name -> (partitions, type); pipelines: name -> (sources, [(op, config)], to)."""
    return Topology(
        name="svc", source_file=tmp_path / "topology.yaml",
        streams={n: StreamSpec(n, n, p, t, SerdeSpec("string"), SerdeSpec("json")) for n, (p, t) in streams.items()},
        pipelines={n: PipelineSpec(n, sources, [StepSpec(op, cfg) for op, cfg in steps], ToSpec(stream=to))
                   for n, (sources, steps, to) in pipelines.items()},
        stores=stores or {},
        tables={n: TableSpec(n, s) for n, s in (tables or {}).items()},
        global_tables={n: TableSpec(n, s, is_global=True) for n, s in (global_tables or {}).items()},
    )


async def _produce(broker: LocalBroker, topology: Topology, stream: str, events: list[tuple[str, Any]]) -> None:
    spec = topology.streams[stream]
    await broker.ensure_topics([TopicSpec(spec.topic, spec.partitions, spec.compacted)])
    records = [OutRecord(spec.topic, default_partition(k.encode(), spec.partitions), k.encode(),
                         None if v is None else json.dumps(v).encode(), 1_000 + i)
               for i, (k, v) in enumerate(events)]
    await broker.append_and_commit(records, "producer", {})


async def _read(broker: LocalBroker, topic: str) -> list[tuple[str, Any]]:
    """Every record of ``topic``, partition by partition, as (key, value)."""
    counts = await broker.list_topics()
    tps = [TopicPartition(topic, p) for p in range(counts[topic])]
    ends = await broker.end_offsets(tps)
    consumer = broker.consumer(None, [topic])
    await consumer.start()
    got: dict[TopicPartition, list] = {tp: [] for tp in tps}
    try:
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for tp, records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).items():
                got[tp] += records
    finally:
        await consumer.close()
    return [(r.key.decode() if r.key else None, json.loads(r.value) if r.value is not None else None)
            for tp in tps for r in got[tp]]


def _last_by_key(rows: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in rows}


async def _run(topology: Topology, broker: LocalBroker, state_dir: Path) -> Any:
    stats = await run_services([topology], broker, until_idle=True, state_dir=state_dir)
    return stats.services[topology.name]


def _store_contents(state_dir: Path, sub: int, partitions: int, store: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for p in range(partitions):
        with TaskState.open(task_dir(state_dir, "svc", sub, p)) as state:
            out.update(state.register(store, "key_value", {}).scan())
    return out


def _counting(tmp_path: Path) -> Topology:
    return _topology(tmp_path, {"ev": (2, "keyed"), "out": (2, "keyed")},
                     {"count": (["ev"], [("test_count", {"store": "counts"})], "out")},
                     stores={"counts": StoreSpec("counts")})


def _events(n: int, keys: str = "abcde") -> list[tuple[str, Any]]:
    return [(keys[i % len(keys)], {"i": i}) for i in range(n)]


def _expected_counts(n: int, keys: str = "abcde") -> dict[str, int]:
    counts: dict[str, int] = {}
    for k, _ in _events(n, keys):
        counts[k] = counts.get(k, 0) + 1
    return counts


# -- tests ----------------------------------------------------------------------------------


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    topology = _counting(tmp_path)
    state = tmp_path / "state"

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _produce(broker, topology, "ev", _events(40))
            first = await _run(topology, broker, state)
            assert first.events_in == 40 and first.restored == 0
            await _produce(broker, topology, "ev", _events(25))
            second = await _run(topology, broker, state)
            assert second.events_in == 25
            assert second.restored == 0  # the local state was up to date: nothing to restore
            assert _last_by_key(await _read(broker, "out")) == _expected_counts(65)
            changelog = await _read(broker, "svc-counts-changelog")
            assert {json.loads(k): v for k, v in changelog} == _expected_counts(65)  # keys: JSON bytes

    asyncio.run(main())
    assert _store_contents(state, 0, 2, "counts") == _expected_counts(65)


def test_wiped_state_is_restored_from_the_whole_changelog(tmp_path: Path) -> None:
    topology = _counting(tmp_path)
    state = tmp_path / "state"

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _produce(broker, topology, "ev", _events(60))
            await _run(topology, broker, state)
            changelog_records = len(await _read(broker, "svc-counts-changelog"))
            assert changelog_records > 0
            shutil.rmtree(state / "state" / "svc")
            restored = await _run(topology, broker, state)
            assert restored.restored == changelog_records
            assert restored.events_in == 0  # restore moved no input position backwards
            await _produce(broker, topology, "ev", _events(10))
            await _run(topology, broker, state)
            assert _last_by_key(await _read(broker, "out")) == _expected_counts(70)

    asyncio.run(main())
    assert _store_contents(state, 0, 2, "counts") == _expected_counts(70)


def test_restore_reads_only_the_changelog_after_the_checkpoint(tmp_path: Path) -> None:
    topology = _counting(tmp_path)
    state = tmp_path / "state"
    snapshot = tmp_path / "snapshot"

    async def changelog_end(broker: LocalBroker) -> int:
        ends = await broker.end_offsets([TopicPartition("svc-counts-changelog", p) for p in range(2)])
        return sum(ends.values())

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _produce(broker, topology, "ev", _events(30))
            await _run(topology, broker, state)
            at_snapshot = await changelog_end(broker)
            shutil.copytree(state / "state" / "svc", snapshot)
            await _produce(broker, topology, "ev", _events(20, "cdefg"))
            await _run(topology, broker, state)
            delta = await changelog_end(broker) - at_snapshot
            assert delta > 0
            # The local state goes back to the checkpoint of the first run: restore must read
            # exactly the changelog written since, and apply nothing twice.
            shutil.rmtree(state / "state" / "svc")
            shutil.copytree(snapshot, state / "state" / "svc")
            third = await _run(topology, broker, state)
            assert third.restored == delta
            assert third.events_in == 0

    asyncio.run(main())
    expected = _expected_counts(30)
    for k, v in _expected_counts(20, "cdefg").items():
        expected[k] = expected.get(k, 0) + v
    assert _store_contents(state, 0, 2, "counts") == expected


def test_table_changes_and_lookup_and_restore_from_the_source(tmp_path: Path) -> None:
    topology = _topology(
        tmp_path,
        {"users": (2, "entity"), "activity": (2, "keyed"), "out": (2, "keyed"), "changes": (2, "keyed")},
        {"enrich": (["activity"], [("test_lookup", {"table": "users-table"})], "out"),
         "watch": (["users-table"], [("test_changes", {})], "changes")},
        tables={"users-table": "users"})
    state = tmp_path / "state"
    users = [("u1", {"name": "A"}), ("u2", {"name": "B"}), ("u1", {"name": "A2"}), ("u2", None), ("u3", None)]

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _produce(broker, topology, "users", users)
            await _run(topology, broker, state)
            changes = await _read(broker, "changes")
            by_key: dict[str, list] = {}
            for k, v in changes:
                by_key.setdefault(k, []).append(v)
            # u3's tombstone changed nothing: no change event
            assert by_key == {"u1": [{"new": {"name": "A"}, "old": None},
                                     {"new": {"name": "A2"}, "old": {"name": "A"}}],
                              "u2": [{"new": {"name": "B"}, "old": None},
                                     {"new": None, "old": {"name": "B"}}]}
            await _produce(broker, topology, "activity",
                           [("u1", {"page": 1}), ("u2", {"page": 2}), ("u3", {"page": 3})])
            await _run(topology, broker, state)
            assert sorted(await _read(broker, "out")) == [
                ("u1", {"value": {"page": 1}, "other": {"name": "A2"}}),
                ("u2", {"value": {"page": 2}, "other": None}),
                ("u3", {"value": {"page": 3}, "other": None})]
            # Without local state the table is rebuilt from its source up to the committed offset.
            shutil.rmtree(state / "state" / "svc")
            await _produce(broker, topology, "activity", [("u1", {"page": 4})])
            third = await _run(topology, broker, state)
            assert third.restored == len(users)
            assert third.events_in == 1
            out = await _read(broker, "out")
            assert len(out) == 4 and ("u1", {"value": {"page": 4}, "other": {"name": "A2"}}) in out
            assert len(await _read(broker, "changes")) == 4  # the rebuild emitted no change again

    asyncio.run(main())


def test_global_table_is_bootstrapped_before_processing(tmp_path: Path) -> None:
    topology = _topology(
        tmp_path, {"countries": (3, "entity"), "ev": (2, "keyed"), "out": (2, "keyed")},
        {"enrich": (["ev"], [("test_lookup", {"global_table": "countries-g", "key": "country"})], "out")},
        global_tables={"countries-g": "countries"})
    state = tmp_path / "state"
    countries = [(c, {"name": c.upper()}) for c in ("be", "de", "fr", "nl", "it")]

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            # The events are there before the countries they need would be processed by a
            # runner that did not bootstrap first.
            await _produce(broker, topology, "ev", [(f"k{i}", {"country": c}) for i, (c, _) in enumerate(countries)])
            await _produce(broker, topology, "countries", countries)
            first = await _run(topology, broker, state)
            assert first.restored == len(countries)
            out = await _read(broker, "out")
            assert sorted((v["value"]["country"], v["other"]) for _, v in out) == \
                [(c, {"name": c.upper()}) for c, _ in sorted(countries)]
            await _produce(broker, topology, "countries", [("es", {"name": "ES"}), ("be", None)])
            await _produce(broker, topology, "ev", [("x", {"country": "es"}), ("y", {"country": "be"})])
            second = await _run(topology, broker, state)
            assert second.restored == 2  # from the global checkpoint on
            out = await _read(broker, "out")
            assert len(out) == len(countries) + 2
            assert {k: v["other"] for k, v in out if k in ("x", "y")} == {"x": {"name": "ES"}, "y": None}

    asyncio.run(main())


def test_copartition_mismatch_on_the_broker_names_streams_and_counts(tmp_path: Path) -> None:
    topology = _topology(
        tmp_path, {"users": (2, "entity"), "activity": (2, "keyed"), "out": (2, "keyed")},
        {"enrich": (["activity"], [("test_lookup", {"table": "users-table"})], "out")},
        tables={"users-table": "users"})

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await broker.ensure_topics([TopicSpec("users", 3, True)])
            with pytest.raises(CopartitionError) as info:
                await _run(topology, broker, tmp_path / "state")
            message = str(info.value)
            assert "'activity' (topic 'activity') has 2" in message
            assert "'users-table' (topic 'users') has 3" in message
            assert "activity" not in await broker.list_topics()  # refused before creating topics

    asyncio.run(main())



def test_group_by_a_table_moves_keys_between_groups(tmp_path: Path) -> None:
    topology = _topology(
        tmp_path, {"users": (2, "entity"), "team-sizes": (1, "keyed")},
        {"sizes": (["users-table"], [("group_by", {"key": "value.team", "name": "by-team"}),
                                     ("test_table_count", {"store": "sizes"})], "team-sizes")},
        stores={"sizes": StoreSpec("sizes")}, tables={"users-table": "users"})
    users = [("u1", {"team": "red"}), ("u2", {"team": "red"}), ("u3", {"team": "blue"}),
             ("u1", {"team": "blue"}), ("u2", None), ("u3", {"team": "blue", "x": 1})]

    async def main() -> None:
        async with started(LocalBroker(tmp_path / "broker")) as broker:
            await _produce(broker, topology, "users", users)
            stats = await _run(topology, broker, tmp_path / "state")
            assert stats.events_out > 0
            assert (await broker.list_topics())["svc-by-team-repartition"] == 2  # the source's count
            assert _last_by_key(await _read(broker, "team-sizes")) == {"red": 0, "blue": 2}

    asyncio.run(main())
