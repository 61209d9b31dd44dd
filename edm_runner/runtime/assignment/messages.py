"""The two messages of edm's group protocol, in one place: what a member tells the group leader
when it joins (``MemberMetadata``) and what the leader gives each member beside its partitions
(``AssignmentData``). See docs/design/scaleout.md.

Invariants:
- The encoding is JSON with ``"v": VERSION``; members of one group may run different edm
  versions during a rolling upgrade, so a field is added, never renamed: add it to the
  dataclass with a default, write it in ``to_bytes`` and read it in ``from_bytes`` (a member
  that does not send it reads as the default).
- ``from_bytes`` accepts anything the broker hands over: empty or foreign user data (another
  protocol, a member that sent none) reads as the defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from edm_runner.runtime.assignment.strategies import TaskId, parse_task, task_name, task_names

VERSION = 1


def _decode(data: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _tasks(names: Any) -> frozenset[TaskId]:
    return frozenset(map(parse_task, names or []))


def _clocks(doc: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in (doc or {}).items()}


@dataclass(frozen=True)
class MemberMetadata:
    """A member's join message. ``instance``: its instance id (None when it sent none: the
    leader names it by its member id). ``http``: its HTTP address. ``offsets``: per task with
    local state, the sum of its checkpointed changelog offsets (higher = fresher). ``active``,
    ``standby``: its tasks in the last assignment it received. ``absent``: the absence clocks
    of the ``static`` strategy it last received (instance id -> ms since when it is missing)."""

    instance: str | None
    http: str | None = None
    offsets: Mapping[TaskId, int] = field(default_factory=dict)
    active: frozenset[TaskId] = frozenset()
    standby: frozenset[TaskId] = frozenset()
    absent: Mapping[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps({"v": VERSION, "instance": self.instance, "http": self.http,
                           "offsets": {task_name(t): o for t, o in self.offsets.items()},
                           "active": task_names(self.active), "standby": task_names(self.standby),
                           "absent": dict(self.absent)}).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> MemberMetadata:
        doc = _decode(data)
        return cls(str(doc["instance"]) if doc.get("instance") else None, doc.get("http"),
                   {parse_task(k): int(v) for k, v in (doc.get("offsets") or {}).items()},
                   _tasks(doc.get("active")), _tasks(doc.get("standby")), _clocks(doc.get("absent")))


@dataclass(frozen=True)
class AssignmentData:
    """What the leader sends each member beside its partitions. ``standby``: the member's
    standby tasks. ``owners``: every assigned task -> the instance holding its active.
    ``hosts``: instance id -> HTTP address, for every member. ``absent``: the ``static``
    strategy's absence clocks, so that a later leader continues them. ``standbys``: every task
    with standbys -> the instances keeping them (request routing: a stale read may go there)."""

    standby: frozenset[TaskId] = frozenset()
    owners: Mapping[TaskId, str] = field(default_factory=dict)
    hosts: Mapping[str, str | None] = field(default_factory=dict)
    absent: Mapping[str, int] = field(default_factory=dict)
    standbys: Mapping[TaskId, tuple[str, ...]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps({"v": VERSION, "standby": task_names(self.standby),
                           "tasks": {task_name(t): i for t, i in self.owners.items()},
                           "hosts": dict(self.hosts), "absent": dict(self.absent),
                           "standbys": {task_name(t): list(i) for t, i in self.standbys.items()}}).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> AssignmentData:
        doc = _decode(data)
        return cls(_tasks(doc.get("standby")), {parse_task(k): str(v) for k, v in (doc.get("tasks") or {}).items()},
                   dict(doc.get("hosts") or {}), _clocks(doc.get("absent")),
                   {parse_task(k): tuple(map(str, v)) for k, v in (doc.get("standbys") or {}).items()})
