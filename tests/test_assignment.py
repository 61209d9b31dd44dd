"""The assignment strategies (pure functions) and the aiokafka adapter's encode/decode path."""
from __future__ import annotations

import json
import re
import textwrap
import uuid
from pathlib import Path

import pytest

from edm_runner.errors import ConfigError, EdmError
from edm_runner.graph.dag import build_dag
from edm_runner.brokers.kafka import KafkaAssignor
from edm_runner.runtime.assignment.assignor import EdmAssignor
from edm_runner.runtime.assignment.consumer import group_consumer
from edm_runner.runtime.assignment.messages import AssignmentData, MemberMetadata
from edm_runner.runtime.assignment.strategies import (MemberInfo, Plan, balanced, custom, load_custom, round_robin,
                                                      static, task_standbys)
from edm_runner.language import load_file
from tests.cli_helpers import edm
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata


def tasks(subs: int, partitions: int) -> list[tuple[int, int]]:
    return [(s, p) for s in range(subs) for p in range(partitions)]


def members(*names: str, **kw) -> list[MemberInfo]:
    return [MemberInfo(n, **kw) for n in names]


def check_plan(plan: Plan, all_tasks: list[tuple[int, int]], standbys: int = 0) -> None:
    """Every task active exactly once; standbys never beside their active, and distinct."""
    given = [t for ts in plan.active.values() for t in ts]
    assert sorted(given) == sorted(all_tasks)
    owners = plan.owners()
    for name, ts in plan.standby.items():
        assert len(ts) == len(set(ts))
        for t in ts:
            assert owners[t] != name
    counts = {t: 0 for t in all_tasks}
    for ts in plan.standby.values():
        for t in ts:
            counts[t] += 1
    assert set(counts.values()) <= {min(standbys, len(plan.active) - 1)}


def loads(plan: Plan) -> list[int]:
    return sorted(len(ts) for ts in plan.active.values())


# -- balanced ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tasks,n_members", [(6, 3), (7, 3), (2, 3), (12, 5), (1, 1), (0, 2)])
def test_balanced_is_fair(n_tasks: int, n_members: int) -> None:
    all_tasks = [(0, p) for p in range(n_tasks)]
    plan = balanced(all_tasks, members(*[f"m{i}" for i in range(n_members)]))
    check_plan(plan, all_tasks)
    assert max(loads(plan)) - min(loads(plan)) <= 1


def test_balanced_spreads_each_subtopology() -> None:
    all_tasks = tasks(2, 4)
    plan = balanced(all_tasks, members("a", "b"))
    for ts in plan.active.values():
        assert sorted(t[0] for t in ts) == [0, 0, 1, 1]


def test_balanced_is_sticky_when_a_member_joins() -> None:
    all_tasks = tasks(1, 6)
    before = balanced(all_tasks, members("a", "b"))
    infos = [MemberInfo(n, previous_active=frozenset(ts)) for n, ts in before.active.items()] + [MemberInfo("c")]
    after = balanced(all_tasks, infos)
    check_plan(after, all_tasks)
    assert loads(after) == [2, 2, 2]
    moved = sum(1 for n in ("a", "b") for t in after.active[n] if t not in before.active[n])
    assert moved == 0  # a and b each gave one task to c and kept the rest
    assert len(after.active["c"]) == 2


def test_balanced_is_sticky_when_a_member_leaves() -> None:
    all_tasks = tasks(2, 3)
    before = balanced(all_tasks, members("a", "b", "c"))
    infos = [MemberInfo(n, previous_active=frozenset(before.active[n])) for n in ("a", "b")]
    after = balanced(all_tasks, infos)
    check_plan(after, all_tasks)
    for n in ("a", "b"):
        assert set(before.active[n]) <= set(after.active[n])


def test_balanced_places_actives_on_the_freshest_state() -> None:
    all_tasks = tasks(1, 4)
    infos = [MemberInfo("a", offsets={(0, 0): 10, (0, 1): 500}, previous_active=frozenset({(0, 0), (0, 1)})),
             MemberInfo("b", offsets={(0, 0): 900, (0, 1): 20})]
    plan = balanced(all_tasks, infos)
    check_plan(plan, all_tasks)
    assert (0, 0) in plan.active["b"] and (0, 1) in plan.active["a"]


def test_balanced_freshness_never_breaks_fairness() -> None:
    all_tasks = tasks(1, 4)
    infos = [MemberInfo("a", offsets={t: 100 for t in all_tasks}), MemberInfo("b")]
    plan = balanced(all_tasks, infos)
    assert loads(plan) == [2, 2]


def test_balanced_standbys_never_beside_actives_and_prefer_state() -> None:
    all_tasks = tasks(2, 3)
    standby_counts = {t: 1 for t in all_tasks}
    infos = [MemberInfo("a"), MemberInfo("b"), MemberInfo("c", offsets={(0, 0): 5})]
    plan = balanced(all_tasks, infos, standby_counts)
    check_plan(plan, all_tasks, standbys=1)
    if plan.owners()[(0, 0)] != "c":
        assert (0, 0) in plan.standby["c"]


def test_balanced_standbys_with_two_replicas_and_too_few_members() -> None:
    all_tasks = tasks(1, 4)
    plan = balanced(all_tasks, members("a", "b"), {t: 2 for t in all_tasks})
    check_plan(plan, all_tasks, standbys=2)  # one standby each: only one other member
    single = balanced(all_tasks, members("a"), {t: 1 for t in all_tasks})
    assert single.standby == {"a": []}


def test_balanced_standbys_are_sticky() -> None:
    all_tasks = tasks(1, 4)
    counts = {t: 1 for t in all_tasks}
    first = balanced(all_tasks, members("a", "b", "c"), counts)
    infos = [MemberInfo(n, previous_active=frozenset(first.active[n]),
                        previous_standby=frozenset(first.standby[n])) for n in ("a", "b", "c")]
    again = balanced(all_tasks, infos, counts)
    assert again.active == first.active and again.standby == first.standby


# -- round robin ------------------------------------------------------------------------------

def test_round_robin_deals_tasks_in_order() -> None:
    all_tasks = tasks(2, 3)
    plan = round_robin(all_tasks, members("b", "a", "c"), {t: 1 for t in all_tasks})
    assert plan.active == {"a": [(0, 0), (1, 0)], "b": [(0, 1), (1, 1)], "c": [(0, 2), (1, 2)]}
    check_plan(plan, all_tasks, standbys=1)
    assert plan.standby["b"] == [(0, 0), (1, 0)]


# -- static -----------------------------------------------------------------------------------

def test_static_pins_and_balances_the_rest() -> None:
    all_tasks = tasks(1, 6)
    pins = {"a": [(0, 0), (0, 1), (0, 2)]}
    plan, absent = static(all_tasks, members("a", "b", "c"), pins, None, reassign_after_ms=1000,
                          absent_since={}, now_ms=0)
    check_plan(plan, all_tasks)
    assert plan.active["a"][:3] == [(0, 0), (0, 1), (0, 2)]
    assert absent == {}


def test_static_absent_instance_waits_then_moves() -> None:
    all_tasks = tasks(1, 4)
    pins = {"a": [(0, 0), (0, 1)], "b": [(0, 2), (0, 3)]}
    plan, absent = static(all_tasks, members("b"), pins, None, reassign_after_ms=60_000,
                          absent_since={}, now_ms=1_000)
    assert plan.active == {"b": [(0, 2), (0, 3)]} and absent == {"a": 1_000}
    plan, absent = static(all_tasks, members("b"), pins, None, reassign_after_ms=60_000,
                          absent_since=absent, now_ms=60_999)
    assert plan.active == {"b": [(0, 2), (0, 3)]} and absent == {"a": 1_000}
    plan, absent = static(all_tasks, members("b"), pins, None, reassign_after_ms=60_000,
                          absent_since=absent, now_ms=61_000)
    check_plan(plan, all_tasks)
    assert absent == {"a": 1_000}
    # a comes back: its pins return and its absence is forgotten
    plan, absent = static(all_tasks, members("a", "b"), pins, None, reassign_after_ms=60_000,
                          absent_since=absent, now_ms=62_000)
    assert plan.active == {"a": [(0, 0), (0, 1)], "b": [(0, 2), (0, 3)]} and absent == {}


def test_static_without_reassign_after_waits_forever() -> None:
    plan, _ = static(tasks(1, 2), members("b"), {"a": [(0, 0)]}, None, reassign_after_ms=None,
                     absent_since={"a": 0}, now_ms=10**12)
    assert plan.active == {"b": [(0, 1)]}


def test_static_standbys_never_beside_actives() -> None:
    all_tasks = tasks(1, 4)
    plan, _ = static(all_tasks, members("a", "b"), {"a": all_tasks}, {t: 1 for t in all_tasks},
                     reassign_after_ms=None, absent_since={}, now_ms=0)
    assert plan.active["a"] == all_tasks and plan.standby == {"a": [], "b": all_tasks}


# -- custom -----------------------------------------------------------------------------------

class _AllToFirst:
    def assign(self, tasks, members, previous):
        return {members[0].instance_id: tasks}


class _Broken:
    def __init__(self, result):
        self.result = result

    def assign(self, tasks, members, previous):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_custom_plan_is_used_with_standbys_placed() -> None:
    all_tasks = tasks(1, 3)
    plan = custom(_AllToFirst(), all_tasks, members("a", "b"), {t: 1 for t in all_tasks})
    assert plan.active == {"a": all_tasks, "b": []} and plan.standby == {"a": [], "b": all_tasks}


@pytest.mark.parametrize("result,problem", [
    ({"a": [(0, 0)]}, "left out task(s) 0_1"),
    ({"a": [(0, 0), (0, 1)], "b": [(0, 1)]}, "gave task(s) twice 0_1"),
    ({"zed": [(0, 0), (0, 1)]}, "unknown member(s) zed"),
    (RuntimeError("boom"), "raised RuntimeError: boom"),
])
def test_custom_invalid_result_falls_back_to_balanced(result, problem, caplog) -> None:
    all_tasks = tasks(1, 2)
    plan = custom(_Broken(result), all_tasks, members("a", "b"))
    check_plan(plan, all_tasks)
    assert loads(plan) == [1, 1]
    assert problem in caplog.text and "using the balanced strategy" in caplog.text


# -- topology side: spec, standby counts, custom loading, the adapter ---------------------------

TOPOLOGY = """\
kind: microservice
name: counter
processing:
  standby_replicas: 1
{assignment}
streams:
  events: {{partitions: 4}}
  users: {{partitions: 4, type: entity}}
  counts-out: {{partitions: 4}}
tables:
  users-table: {{from: users}}
stores:
  counts: {{type: key_value{store_extra}}}
  plain: {{type: key_value, standby_replicas: 0}}
pipelines:
  count:
    from: events
    steps:
      - join: {{table: users-table, kind: left, value: "value"}}
      - group_by: {{key: key, name: by-key}}
      - count: {{store: counts}}
    to: counts-out
"""


def write(tmp_path: Path, assignment: str = "", store_extra: str = "", extra_files: dict | None = None) -> Path:
    for name, text in (extra_files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY.format(assignment=textwrap.indent(assignment, "  "), store_extra=store_extra))
    return path


def test_spec_defaults_and_standby_counts(tmp_path: Path) -> None:
    topology = load_file(write(tmp_path, store_extra=", standby_replicas: 2"))
    assert topology.processing.assignment.strategy == "balanced"
    assert topology.stores["counts"].standby_replicas == 2
    assert topology.stores["plain"].standby_replicas == 0
    dag = build_dag(topology)
    counts = task_standbys(topology, dag)
    # sub 0: the join with the table (its store counts with the service default), sub 1: count
    assert counts == {**{(0, p): 1 for p in range(4)}, **{(1, p): 2 for p in range(4)}}


def test_spec_static(tmp_path: Path) -> None:
    topology = load_file(write(tmp_path, "assignment:\n  strategy: static\n  static:\n"
                                         "    reassign_after: 30s\n    instances: {pod-0: ['0_0', '1_0']}\n"))
    spec = topology.processing.assignment
    assert (spec.strategy, spec.reassign_after_ms, spec.instances) == ("static", 30_000, {"pod-0": ["0_0", "1_0"]})
    assert EdmAssignor(topology, build_dag(topology), "pod-0").pins == {"pod-0": [(0, 0), (1, 0)]}


@pytest.mark.parametrize("instances,message", [
    ("{pod-0: ['0_9']}", "no such task"),
    ("{pod-0: ['0_0'], pod-1: ['0_0']}", "pinned to both"),
])
def test_static_pins_checked_against_the_dag(tmp_path: Path, instances: str, message: str) -> None:
    topology = load_file(write(tmp_path, f"assignment:\n  strategy: static\n  static: {{instances: {instances}}}\n"))
    with pytest.raises(EdmError, match=message):
        EdmAssignor(topology, build_dag(topology), "pod-0")


def test_unknown_pin_hint_names_the_topology_file(tmp_path: Path) -> None:
    topology = load_file(write(tmp_path, "assignment:\n  strategy: static\n  static: {instances: {pod-0: ['0_9']}}\n"))
    with pytest.raises(EdmError, match=re.escape(f"`edm describe {topology.source_file}` lists the tasks")):
        EdmAssignor(topology, build_dag(topology), "pod-0")


@pytest.mark.kafka
def test_run_with_an_unknown_pin_names_the_file_as_the_user_gave_it(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The hint comes from the CLI's Invocation: the file as typed (the assignor only exists on Kafka)."""
    suffix = uuid.uuid4().hex[:8]
    text = write(tmp_path, "assignment:\n  strategy: static\n  static: {instances: {pod-0: ['0_9']}}\n").read_text()
    for stream in ("events", "users", "counts-out"):  # topics of their own on a shared broker
        text = text.replace(f"  {stream}: {{partitions", f"  {stream}: {{topic: {stream}-{suffix}, partitions")
    (tmp_path / "pinned.yaml").write_text(text.replace("name: counter", f"name: counter-{suffix}"))
    result = edm("run", "pinned.yaml", "--broker", f"kafka://{kafka_bootstrap}", "--state-dir", "my state",
                 "--until-idle", cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert "no such task; `edm describe pinned.yaml` lists the tasks" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module,ref,message", [
    ("class Fine:\n    def assign(self, tasks, members, previous):\n        return {}\n", "asg:Nope", "no function"),
    ("def assign(tasks, members, previous):\n    return {}\n", "asg:assign", "not a class"),
    ("class NoAssign:\n    pass\n", "asg:NoAssign", "not a class with an assign method"),
    ("", "missing_module:Cls", "cannot import module"),
])
def test_custom_class_errors_at_validation(tmp_path: Path, module: str, ref: str, message: str) -> None:
    path = write(tmp_path, f"assignment: {{strategy: custom, custom: {{python: '{ref}'}}}}\n",
                 extra_files={"asg.py": module} if module else None)
    with pytest.raises(ConfigError, match=message):
        load_file(path)


def test_custom_class_that_cannot_be_constructed(tmp_path: Path) -> None:
    path = write(tmp_path, "assignment: {strategy: custom, custom: {python: 'asg2:NeedsArgs'}}\n",
                 extra_files={"asg2.py": "class NeedsArgs:\n    def __init__(self, x):\n        pass\n"
                                         "    def assign(self, tasks, members, previous):\n        return {}\n"})
    topology = load_file(path)
    with pytest.raises(EdmError, match="cannot be constructed without arguments"):
        load_custom(topology.processing.assignment, topology.base_dir)


class _Cluster:
    """The one ClusterMetadata method an assignor reads."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.counts[topic])) if topic in self.counts else None


def test_adapter_round_trip(tmp_path: Path, caplog) -> None:
    """``EdmAssignor`` through the Kafka broker's assignor hook and the consumer protocol's
    wire structures, as aiokafka drives them."""
    topology = load_file(write(tmp_path))
    dag = build_dag(topology)
    counts = {t: 4 for sub in dag.subtopologies for t in sub.source_topics}
    edm_assignors = {name: EdmAssignor(topology, dag, name) for name in ("pod-a", "pod-b")}
    edm_assignors["pod-a"].http_address = "http://a:8080"
    edm_assignors["pod-b"].local_offsets = lambda: {(1, 3): 42}
    assignors = {name: KafkaAssignor(a) for name, a in edm_assignors.items()}
    assert {a.name for a in assignors.values()} == {"edm"}
    topics = dag.source_topics()
    metadata = {f"member-{n}": ConsumerProtocolMemberMetadata.decode(a.metadata(topics).encode())
                for n, a in assignors.items()}
    result = assignors["pod-a"].assign(_Cluster(counts), metadata)
    seen: dict[tuple[str, int], str] = {}
    caplog.set_level("INFO", "edm.assignment")
    got = {}
    for name, assignor in assignors.items():
        assignment = result[f"member-{name}"]
        for topic, ps in assignment.assignment:
            for p in ps:
                assert (topic, p) not in seen
                seen[(topic, p)] = name
        edm_assignors[name].on_tasks_assigned = lambda a, name=name: got.__setitem__(name, a)
        assignor.on_assignment(ConsumerProtocolMemberAssignment.decode(assignment.encode()))
    assert set(seen) == {(t, p) for t in topics for p in range(4)}
    # copartitioned: partition N of every source topic of a sub-topology on one member
    for sub in dag.subtopologies:
        for p in range(4):
            assert len({seen[(t, p)] for t in sub.source_topics}) == 1
    a, b = got["pod-a"], got["pod-b"]
    assert (1, 3) in b.active  # pod-b reported state for 1_3
    assert a.owners == b.owners and a.hosts == {"pod-a": "http://a:8080", "pod-b": None}
    assert not (a.active & a.standby) and a.standby == b.active and b.standby == a.active
    # every member learns where every task's standbys are (request routing: stale reads)
    assert a.standbys == b.standbys == {**{t: ("pod-a",) for t in a.standby}, **{t: ("pod-b",) for t in b.standby}}
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("assignment "))
    doc = json.loads(line.removeprefix("assignment "))
    assert doc["service"] == "counter" and doc["instance"] in assignors
    # the next join reports the previous tasks
    meta = json.loads(assignors["pod-a"].metadata(topics).user_data)
    assert meta["active"] == sorted(f"{s}_{p}" for s, p in a.active) and meta["http"] == "http://a:8080"


def test_local_offsets_report_open_tasks_and_standbys_from_memory(tmp_path: Path) -> None:
    """Active tasks and standbys open in this process report their in-memory checkpoints (LMDB
    must not open an environment twice in a process), other tasks the scan of the disk made
    before the join (no disk read on the loop); one ``group_consumer`` wires them."""
    from types import SimpleNamespace

    from edm_runner.brokers.kafka import KafkaBroker

    def opened(offsets: dict) -> SimpleNamespace:
        checkpoint = SimpleNamespace(changelogs=offsets)
        return SimpleNamespace(state=SimpleNamespace(checkpoint=lambda: checkpoint))

    topology = load_file(write(tmp_path))
    dag = build_dag(topology)
    tasks = SimpleNamespace(state_dir=tmp_path / "state", tasks={(0, 1): opened({"a": 3, "b": 4})},
                            on_disk={(0, 1): 1, (0, 3): 9})
    standbys = SimpleNamespace(tasks={(0, 2): opened({"a": 40})})
    broker = KafkaBroker({"bootstrap_servers": "localhost:9"})  # never started: no connection
    _, assignor = group_consumer(broker, topology, dag, dag.source_topics(), tasks=tasks, standbys=standbys)
    assert assignor is not None and assignor.local_offsets() == {(0, 1): 7, (0, 2): 40, (0, 3): 9}


def test_member_messages_round_trip_and_read_foreign_data_as_defaults() -> None:
    """The group protocol's two messages encode in one place; data another protocol (or a member
    that sent none) left reads as the defaults, so a leader never fails on a member's join."""
    meta = MemberMetadata("pod-a", "http://a:8080", {(0, 1): 7}, frozenset({(0, 1)}), frozenset({(1, 0)}),
                          {"pod-b": 12})
    assert MemberMetadata.from_bytes(meta.to_bytes()) == meta
    data = AssignmentData(frozenset({(1, 2)}), {(0, 1): "pod-a"}, {"pod-a": None}, {"pod-b": 12})
    assert AssignmentData.from_bytes(data.to_bytes()) == data
    data = AssignmentData(frozenset({(1, 2)}), {(0, 1): "pod-a"}, {"pod-a": None}, {}, {(0, 1): ("pod-b", "pod-c")})
    assert AssignmentData.from_bytes(data.to_bytes()) == data
    for foreign in (None, b"", b"not json", b"[1, 2]"):
        assert MemberMetadata.from_bytes(foreign) == MemberMetadata(None)
        assert AssignmentData.from_bytes(foreign) == AssignmentData()


def test_group_consumer_where_groups_have_one_member(tmp_path: Path) -> None:
    """A broker whose groups have one member (``supports_assignor`` False: the embedded one)
    gets no assignor, so static pins do not apply, and its consumer tells the rebalance
    listener of its one assignment, every partition, before ``start`` returns."""
    import asyncio

    from edm_runner.brokers.base import TopicPartition, TopicSpec
    from edm_runner.brokers.local import LocalBroker

    topology = load_file(write(tmp_path, "assignment:\n  strategy: static\n  static:\n"
                                         "    instances: {pod-0: ['0_0']}\n"))
    dag = build_dag(topology)
    topics = dag.source_topics()

    class Listener:
        def __init__(self) -> None:
            self.assigned_tps: list[set[TopicPartition]] = []

        async def revoked(self, tps: set[TopicPartition]) -> None:
            raise AssertionError("the embedded broker never revokes")

        async def assigned(self, tps: set[TopicPartition]) -> None:
            self.assigned_tps.append(tps)

    async def scenario() -> tuple[object, Listener]:
        broker = LocalBroker(tmp_path / "broker")
        await broker.start()
        try:
            await broker.ensure_topics([TopicSpec(t, 4) for t in topics])
            listener = Listener()
            consumer, assignor = group_consumer(broker, topology, dag, topics, listener)
            await consumer.start()
            await consumer.close()
            return assignor, listener
        finally:
            await broker.close()

    assignor, listener = asyncio.run(scenario())
    assert assignor is None
    assert listener.assigned_tps == [{TopicPartition(t, p) for t in topics for p in range(4)}]
