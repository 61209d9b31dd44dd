"""The assignment strategies: which group member runs which task, and which keeps which standby.

Pure functions over tasks and members (unit-tested without a broker), and what they take from
the topology (standby counts, static pins, the custom class). ``assignor.EdmAssignor`` runs
them in the group leader. See docs/design/scaleout.md.

Invariants:
- Whole tasks are assigned: task N of sub-topology S is partition N of every source topic of S,
  so copartitioned partitions always land on the same member.
- Every task is active on at most one member; only the ``static`` strategy leaves tasks
  unassigned (pinned to an absent instance that has not been gone ``reassign_after`` yet).
- A standby never sits on the member holding the task's active.
- ``balanced`` gives each member floor(T/M) or ceil(T/M) active tasks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from edm_runner.errors import EdmError
from edm_runner.graph.dag import Dag
from edm_runner.invocation import Invocation
from edm_runner.language.model import AssignmentSpec, Topology

log = logging.getLogger("edm.assignment")

TaskId = tuple[int, int]  # (sub-topology, partition)


def task_name(task: TaskId) -> str:
    """``"<sub>_<partition>"``, as ``edm describe`` and the state directories name a task."""
    return f"{task[0]}_{task[1]}"


def parse_task(text: str) -> TaskId:
    """The task named ``"<sub>_<partition>"``; a ``ValueError`` for any other text."""
    sub, _, partition = text.partition("_")
    return int(sub), int(partition)


def task_names(tasks: Iterable[TaskId]) -> list[str]:
    """``tasks`` sorted, by name."""
    return [task_name(t) for t in sorted(tasks)]


@dataclass(frozen=True)
class MemberInfo:
    """What a member reports when it joins. ``offsets``: per task with local state, the sum of
    its checkpointed changelog offsets (higher = fresher). ``previous_*``: its tasks before."""

    instance_id: str
    offsets: Mapping[TaskId, int] = field(default_factory=dict)
    previous_active: frozenset[TaskId] = frozenset()
    previous_standby: frozenset[TaskId] = frozenset()
    http: str | None = None


@dataclass
class Plan:
    """Tasks per instance id. Every member has an entry (possibly empty)."""

    active: dict[str, list[TaskId]]
    standby: dict[str, list[TaskId]]

    def owners(self) -> dict[TaskId, str]:
        return {t: m for m, tasks in self.active.items() for t in tasks}


# -- strategies --------------------------------------------------------------------------------

def balanced(tasks: Iterable[TaskId], members: list[MemberInfo],
             standbys: Mapping[TaskId, int] | None = None) -> Plan:
    """Even counts (floor or ceil of tasks/members each); a task goes to the member with the
    freshest state for it if that member has room, ties to its previous owner; the rest go to
    the least loaded member (fewest tasks, then fewest of the task's sub-topology)."""
    tasks = sorted(set(tasks))
    active = _balanced_actives(tasks, members)
    return Plan(active, place_standbys(active, members, standbys or {}))


def _balanced_actives(tasks: list[TaskId], members: list[MemberInfo]) -> dict[str, list[TaskId]]:
    names = sorted(m.instance_id for m in members)
    active: dict[str, list[TaskId]] = {n: [] for n in names}
    if not names:
        return active
    floor, extra = divmod(len(tasks), len(names))
    at_ceil = 0

    def has_room(name: str) -> bool:
        count = len(active[name])
        return count < floor or (count == floor and at_ceil < extra)

    def give(name: str, task: TaskId) -> None:
        nonlocal at_ceil
        active[name].append(task)
        if len(active[name]) == floor + 1:
            at_ceil += 1

    by_name = {m.instance_id: m for m in members}
    # The strongest claims first, so a member's room goes to the tasks it holds freshest.
    claims = sorted(((-by_name[n].offsets.get(t, -1), t not in by_name[n].previous_active, t, n)
                     for t in tasks for n in names
                     if t in by_name[n].offsets or t in by_name[n].previous_active))
    placed: set[TaskId] = set()
    for _, _, task, name in claims:
        if task not in placed and has_room(name):
            give(name, task)
            placed.add(task)
    for task in tasks:
        if task not in placed:
            name = min((n for n in names if has_room(n)),
                       key=lambda n: (len(active[n]), sum(t[0] == task[0] for t in active[n]), n))
            give(name, task)
    for name in names:
        active[name].sort()
    return active


def place_standbys(active: Mapping[str, list[TaskId]], members: list[MemberInfo],
                   standbys: Mapping[TaskId, int]) -> dict[str, list[TaskId]]:
    """``standbys[t]`` standbys of each active task ``t``, on members other than its active's:
    members with the freshest state for it first, then its previous standbys, then the least
    loaded. With too few members, a task gets fewer standbys."""
    by_name = {m.instance_id: m for m in members}
    result: dict[str, list[TaskId]] = {m.instance_id: [] for m in members}
    owners = {t: m for m, ts in active.items() for t in ts}
    for task in sorted(owners):
        candidates = [n for n in sorted(by_name) if n != owners[task]]
        candidates.sort(key=lambda n: (-by_name[n].offsets.get(task, -1),
                                       task not in by_name[n].previous_standby,
                                       len(result[n]) + len(active.get(n, ())), n))
        for name in candidates[:standbys.get(task, 0)]:
            result[name].append(task)
    return result


def round_robin(tasks: Iterable[TaskId], members: list[MemberInfo],
                standbys: Mapping[TaskId, int] | None = None) -> Plan:
    """Tasks sorted by (sub-topology, partition) dealt to members sorted by instance id; the
    standbys of the i-th task go to the members after its active in that order."""
    names = sorted(m.instance_id for m in members)
    active: dict[str, list[TaskId]] = {n: [] for n in names}
    standby: dict[str, list[TaskId]] = {n: [] for n in names}
    for i, task in enumerate(sorted(set(tasks))):
        if not names:
            break
        active[names[i % len(names)]].append(task)
        for j in range(1, min((standbys or {}).get(task, 0), len(names) - 1) + 1):
            standby[names[(i + j) % len(names)]].append(task)
    return Plan(active, standby)


def static(tasks: Iterable[TaskId], members: list[MemberInfo], pins: Mapping[str, Iterable[TaskId]],
           standbys: Mapping[TaskId, int] | None, *, reassign_after_ms: int | None,
           absent_since: Mapping[str, int], now_ms: int) -> tuple[Plan, dict[str, int]]:
    """Pinned tasks go to their instance; unpinned ones are balanced over the members present.
    A pinned instance missing from ``members`` keeps its tasks unassigned until it has been
    absent ``reassign_after_ms`` (None: forever); then they are balanced too. Returns the plan
    and the updated ``absent_since`` (instance id -> ms since when it is missing)."""
    tasks = sorted(set(tasks))
    present = {m.instance_id for m in members}
    absent = {i: absent_since.get(i, now_ms) for i in pins if i not in present}
    pinned = {t: i for i, ts in pins.items() for t in ts}
    expired = {i for i, since in absent.items()
               if reassign_after_ms is not None and now_ms - since >= reassign_after_ms}
    free = [t for t in tasks if t not in pinned or pinned[t] in expired]
    active = _balanced_actives(free, members)
    for task in tasks:
        if pinned.get(task) in present:
            active[pinned[task]].append(task)
    for name in active:
        active[name].sort()
    return Plan(active, place_standbys(active, members, standbys or {})), absent


class CustomAssignor(Protocol):
    """The interface of a ``custom`` strategy class (constructed with no arguments).

    ``assign`` returns, per instance id, its active tasks; ``previous`` maps each task to the
    instance that held it before (tasks nobody held are absent). Every task must be given to
    exactly one member of ``members``. Standbys are placed as by ``balanced``."""

    def assign(self, tasks: list[TaskId], members: list[MemberInfo],
               previous: dict[TaskId, str]) -> Mapping[str, Iterable[TaskId]]: ...


def custom(impl: CustomAssignor, tasks: Iterable[TaskId], members: list[MemberInfo],
           standbys: Mapping[TaskId, int] | None = None) -> Plan:
    """``impl``'s plan, or (logged as an ERROR) the balanced one when ``impl`` raises or its
    result leaves a task out, gives one twice or names an unknown member."""
    tasks = sorted(set(tasks))
    previous = {t: m.instance_id for m in members for t in m.previous_active}
    try:
        result = {str(k): [tuple(t) for t in v]
                  for k, v in impl.assign(list(tasks), list(members), previous).items()}
        problem = _custom_problem(result, tasks, {m.instance_id for m in members})
    except Exception as exc:  # user code: any failure falls back, the group keeps running
        problem = f"raised {type(exc).__name__}: {exc}"
    if problem:
        log.error("custom assignor %s %s; using the balanced strategy for this rebalance",
                  type(impl).__name__, problem)
        return balanced(tasks, members, standbys)
    active: dict[str, list[TaskId]] = {m.instance_id: [] for m in members}
    for name, ts in result.items():
        active[name] = sorted(ts)  # type: ignore[arg-type]
    return Plan(active, place_standbys(active, members, standbys or {}))


def _custom_problem(result: Mapping[str, list[Any]], tasks: list[TaskId], names: set[str]) -> str:
    unknown = sorted(set(result) - names)
    if unknown:
        return f"named unknown member(s) {', '.join(unknown)}"
    given = [t for ts in result.values() for t in ts]
    twice = sorted({task_name(t) for t in given if given.count(t) > 1})
    missing = sorted(task_name(t) for t in set(tasks) - set(given))
    extra = sorted(task_name(t) for t in set(given) - set(tasks))
    for what, items in (("gave task(s) twice", twice), ("left out task(s)", missing),
                        ("gave unknown task(s)", extra)):
        if items:
            return f"{what} {', '.join(items)}"
    return ""


# -- topology side -----------------------------------------------------------------------------

def task_standbys(topology: Topology, dag: Dag) -> dict[TaskId, int]:
    """Standby count per task: the most ``standby_replicas`` among its sub-topology's stores
    with a changelog (a table's store counts: its source topic is its changelog)."""
    result: dict[TaskId, int] = {}
    for sub in dag.subtopologies:
        counts = [topology.stores[s].standby_replicas for s in sub.stores
                  if s in topology.stores and topology.stores[s].changelog]
        counts += [topology.processing.standby_replicas for s in sub.stores if s in topology.tables]
        count = max(counts, default=0)
        if count:
            result.update({(sub.id, p): count for p in range(sub.tasks)})
    return result


def resolve_pins(spec: AssignmentSpec, dag: Dag, invocation: Invocation) -> dict[str, list[TaskId]]:
    """The ``static`` pins as task ids; an unknown or twice-pinned task is an ``EdmError``
    (whose hint repeats ``invocation``, how the user ran edm)."""
    known = {(sub.id, p) for sub in dag.subtopologies for p in range(sub.tasks)}
    pins: dict[str, list[TaskId]] = {}
    seen: dict[TaskId, str] = {}
    for instance, names in spec.instances.items():
        for name in names:
            task = parse_task(name)
            if task not in known:
                raise EdmError(f"{spec.pos}: static assignment pins task {name!r} to {instance!r} but the "
                               f"topology has no such task; `{invocation.command('describe')}` lists the tasks")
            if task in seen:
                raise EdmError(f"{spec.pos}: task {name!r} is pinned to both {seen[task]!r} and "
                               f"{instance!r}; pin each task to one instance")
            seen[task] = instance
            pins.setdefault(instance, []).append(task)
    return pins


def load_custom(spec: AssignmentSpec, base_dir: Path) -> CustomAssignor:
    """Instantiates the ``custom`` class; an ``EdmError`` says what is wrong with it."""
    from edm_runner.language.functions import resolve_function

    ref = spec.custom or ""
    cls = resolve_function(ref, base_dir)
    if not isinstance(cls, type):
        raise EdmError(f"{spec.pos}: custom assignor {ref!r} is not a class (it is a "
                       f"{type(cls).__name__}); reference a class with an assign(tasks, members, previous) method")
    try:
        impl = cls()
    except Exception as exc:
        raise EdmError(f"{spec.pos}: custom assignor {ref!r} cannot be constructed without arguments "
                       f"({type(exc).__name__}: {exc})") from None
    if not callable(getattr(impl, "assign", None)):
        raise EdmError(f"{spec.pos}: custom assignor {ref!r} has no assign(tasks, members, previous) method")
    return impl
