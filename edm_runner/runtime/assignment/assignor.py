"""``EdmAssignor``: edm's ``GroupAssignor`` (brokers.base), the strategies run in the group
leader and what a member keeps of each assignment. See docs/design/scaleout.md.

Invariants:
- Whole tasks are assigned: a member gets partition N of every source topic of sub-topology S
  (that has a partition N) for each task (S, N) of its plan.
- ``current`` changes only in ``on_assignment``, which calls ``on_tasks_assigned`` with it, so
  whoever hooks that sees every assignment, in order, before the rebalance listener does.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from edm_runner.brokers.base import MemberAssignment
from edm_runner.graph.dag import Dag
from edm_runner.invocation import Invocation
from edm_runner.language.model import Topology
from edm_runner.runtime.assignment.messages import AssignmentData, MemberMetadata
from edm_runner.runtime.assignment.strategies import (MemberInfo, Plan, TaskId, balanced, custom, load_custom,
                                                      resolve_pins, round_robin, static, task_names, task_standbys)

log = logging.getLogger("edm.assignment")


def default_instance_id() -> str:
    """A member's name when the topology gives no instance id."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class StandbyAssignment:
    """What this member got in the last rebalance (see docs/design/scaleout.md)."""

    instance_id: str
    generation: int
    active: frozenset[TaskId]
    standby: frozenset[TaskId]
    owners: Mapping[TaskId, str]
    hosts: Mapping[str, str | None]
    standbys: Mapping[TaskId, tuple[str, ...]] = field(default_factory=dict)  # every task's standby instances


class EdmAssignor:
    """Runs the topology's strategy over the group's tasks. One instance per consumer.

    Set by the runtime: ``local_offsets`` (called at every join, synchronously),
    ``on_tasks_assigned`` (called synchronously after each assignment, before the rebalance
    listener's ``assigned``), ``http_address``."""

    name = "edm"

    def __init__(self, topology: Topology, dag: Dag, instance_id: str | None = None, *,
                 invocation: Invocation | None = None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.topology = topology
        self.dag = dag
        self.spec = topology.processing.assignment
        self.instance_id = instance_id or default_instance_id()
        self.standbys = task_standbys(topology, dag)
        invocation = invocation or Invocation(str(topology.source_file))
        self.pins = resolve_pins(self.spec, dag, invocation) if self.spec.strategy == "static" else {}
        self.impl = load_custom(self.spec, topology.base_dir) if self.spec.strategy == "custom" else None
        self.clock_ms = clock_ms
        self.http_address: str | None = None
        self.local_offsets: Callable[[], Mapping[TaskId, int]] = dict
        self.on_tasks_assigned: Callable[[StandbyAssignment], None] | None = None
        self.current: StandbyAssignment | None = None
        self._absent: dict[str, int] = {}
        self._generation = 0

    # GroupAssignor -----------------------------------------------------------------------------

    def metadata(self, topics: Sequence[str]) -> bytes:
        current = self.current
        return MemberMetadata(self.instance_id, self.http_address, self.local_offsets(),
                              current.active if current else frozenset(),
                              current.standby if current else frozenset(), self._absent).to_bytes()

    def assign(self, partitions: Mapping[str, int], members: Mapping[str, bytes]) -> dict[str, MemberAssignment]:
        counts = {t: partitions.get(t) or self.dag.partitions.get(t, 1)
                  for sub in self.dag.subtopologies for t in sub.source_topics}
        tasks = [(sub.id, p) for sub in self.dag.subtopologies
                 for p in range(max((counts[t] for t in sub.source_topics), default=1))]
        infos: dict[str, MemberInfo] = {}
        member_of: dict[str, str] = {}  # instance id -> member id
        absent = dict(self._absent)
        for member_id, data in sorted(members.items()):
            meta = MemberMetadata.from_bytes(data)
            instance = meta.instance or member_id
            if instance in infos:  # two members claim one instance id: keep them apart
                instance = f"{instance}#{member_id}"
            member_of[instance] = member_id
            for name, since in meta.absent.items():
                absent.setdefault(name, since)
            infos[instance] = MemberInfo(instance, meta.offsets, meta.active, meta.standby, meta.http)
        plan = self.plan(tasks, list(infos.values()), absent)
        owners = plan.owners()
        hosts = {i: info.http for i, info in infos.items()}
        standbys: dict[TaskId, list[str]] = {}
        for instance, tasks_kept in sorted(plan.standby.items()):
            for task in tasks_kept:
                standbys.setdefault(task, []).append(instance)
        result = {}
        for instance, member_id in member_of.items():
            by_topic: dict[str, list[int]] = {}
            for sub_id, p in plan.active.get(instance, []):
                for topic in self.dag.subtopologies[sub_id].source_topics:
                    if p < counts[topic]:
                        by_topic.setdefault(topic, []).append(p)
            data = AssignmentData(frozenset(plan.standby.get(instance, [])), owners, hosts, self._absent,
                                  {t: tuple(i) for t, i in standbys.items()})
            result[member_id] = MemberAssignment(by_topic, data.to_bytes())
        return result

    def on_assignment(self, partitions: Mapping[str, Sequence[int]], user_data: bytes) -> None:
        data = AssignmentData.from_bytes(user_data)
        subs = {t: sub.id for sub in self.dag.subtopologies for t in sub.source_topics}
        active = frozenset((subs[topic], p) for topic, ps in partitions.items() if topic in subs for p in ps)
        self._absent = dict(data.absent)
        self._generation += 1
        self.current = StandbyAssignment(self.instance_id, self._generation, active, data.standby,
                                         data.owners, data.hosts, data.standbys)
        log.info("assignment %s", json.dumps({
            "service": self.topology.name, "instance": self.instance_id, "generation": self._generation,
            "active": task_names(self.current.active), "standby": task_names(self.current.standby),
            "partitions": {topic: sorted(ps) for topic, ps in sorted(partitions.items())}}))
        if self.on_tasks_assigned is not None:
            self.on_tasks_assigned(self.current)

    # the strategy ----------------------------------------------------------------------------

    def plan(self, tasks: list[TaskId], members: list[MemberInfo], absent: Mapping[str, int]) -> Plan:
        """The plan of the configured strategy. ``static`` updates the absence clocks, which
        travel to every member in the assignment (so a later leader continues them)."""
        strategy = self.spec.strategy
        if strategy == "round_robin":
            return round_robin(tasks, members, self.standbys)
        if strategy == "custom" and self.impl is not None:
            return custom(self.impl, tasks, members, self.standbys)
        if strategy == "static":
            plan, self._absent = static(tasks, members, self.pins, self.standbys,
                                        reassign_after_ms=self.spec.reassign_after_ms,
                                        absent_since=absent, now_ms=self.clock_ms())
            waiting = sorted(t for ts in (self.pins.get(i, []) for i in self._absent) for t in ts
                             if t not in plan.owners())
            if waiting:
                log.warning("tasks %s wait for their pinned instance(s) %s", ", ".join(task_names(waiting)),
                            ", ".join(sorted(self._absent)))
            return plan
        return balanced(tasks, members, self.standbys)
