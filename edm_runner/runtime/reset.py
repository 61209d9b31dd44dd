"""Resetting services so that they reprocess their inputs from scratch (`edm reset`): a plan per
service (input offsets, internal topics, local state), computed from the broker before anything
changes, then applied. The CLI renders the plans; this module prints nothing."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from edm_runner.brokers.base import Broker, TopicPartition
from edm_runner.errors import EdmError
from edm_runner.language.model import Topology

__all__ = ["ResetPlan", "plan_resets", "apply_reset"]


@dataclass
class ResetPlan:
    """What a reset does to one service. ``offsets``: input partition -> (committed offset or
    None, new offset). ``rewritten``: the input topics set to their end instead, because the
    services being reset write them (the reprocessing writes their records again). ``topics``:
    existing internal topics to delete. ``state``: the service's local state directory when it
    exists, under ``state_dir``."""

    service: str
    broker: str
    offsets: dict[TopicPartition, tuple[int | None, int]] = field(default_factory=dict)
    rewritten: set[str] = field(default_factory=set)
    topics: list[str] = field(default_factory=list)
    state: Path | None = None
    state_dir: Path = Path()


@dataclass(frozen=True)
class _ResetTopics:
    """What a reset touches of one service. ``inputs``: the declared topics its group consumes
    (sources and table sources; global tables are read without the group). ``internal``: the
    topics the runtime creates beyond the declared streams (repartition topics, store
    changelogs). ``written``: the declared topics its pipelines write."""

    inputs: set[str]
    internal: set[str]
    written: set[str]


def _reset_topics(topology: Topology) -> _ResetTopics:
    from edm_runner.runtime.processing import CompiledService
    from edm_runner.runtime.service import topic_specs
    from edm_runner.runtime.stats import ServiceStats
    compiled = CompiledService(topology, ServiceStats())
    declared = {s.topic for s in topology.streams.values()}
    internal = {spec.name for spec in topic_specs(topology, compiled)} - declared
    tables = {topology.streams[t.source].topic for t in topology.tables.values()}
    written = {t for node in compiled.dag.sinks() for t in node.topics} - internal
    return _ResetTopics((set(compiled.dag.source_topics()) | tables) - internal, internal, written)


async def plan_resets(services: list[Topology], broker: Broker, state_dir: Path, since_ms: int | None,
                      again: str) -> list[ResetPlan]:
    """The plan of each service, changing nothing. Inputs go to their beginning (or the first
    offset at ``since_ms``), except the inputs that the services being reset write themselves:
    those go to their end, as the reprocessing writes their records again, and reading the old
    ones too would process every one of them twice (a count downstream would double).
    Refuses while an instance of a service runs; ``again`` is the command line that runs this
    reset again, for the message."""
    topics = [_reset_topics(s) for s in services]
    rewritten = {t for each in topics for t in each.written}
    return [await _plan(s, t, broker, state_dir, since_ms, again, rewritten) for s, t in zip(services, topics)]


async def _plan(topology: Topology, topics: _ResetTopics, broker: Broker, state_dir: Path, since_ms: int | None,
                again: str, rewritten: set[str]) -> ResetPlan:
    from edm_runner.state.task import service_dir
    group = topology.name
    if await broker.group_alive(group):
        raise EdmError(f"an instance of service {group!r} is running on {broker.describe()}; edm reset "
                       f"stops nothing itself: stop every instance, then run `{again}` again")
    existing = await broker.list_topics()
    committed = await broker.group_offsets(group, sorted(topics.inputs))
    tps = sorted(TopicPartition(t, p) for t in topics.inputs if t in existing for p in range(existing[t]))
    reread = [tp for tp in tps if tp.topic not in rewritten]
    to_end = [tp for tp in tps if tp.topic in rewritten]
    targets = {}
    if reread:
        targets.update(await broker.beginning_offsets(reread) if since_ms is None
                       else await broker.offsets_for_times(reread, since_ms))
    if to_end:
        targets.update(await broker.end_offsets(to_end))
    local = service_dir(state_dir, group)
    return ResetPlan(group, broker.describe(), {tp: (committed.get(tp), targets[tp]) for tp in tps},
                     rewritten & topics.inputs, sorted(topics.internal & set(existing)),
                     local if local.exists() else None, state_dir)


async def apply_reset(plan: ResetPlan, broker: Broker) -> None:
    """Offsets first, then topics, then local state; each step is idempotent, so a reset
    interrupted half-way is completed by running it again."""
    from edm_runner.state.calls import forget_results
    from edm_runner.state.offline import wipe
    await broker.set_group_offsets(plan.service, {tp: new for tp, (_, new) in plan.offsets.items()})
    await broker.delete_topics(plan.topics)
    if plan.state is not None:
        wipe(plan.state_dir, plan.service)
    # The replay calls again (the quota counts stay: it cannot exceed a quota either).
    await asyncio.to_thread(forget_results, plan.state_dir, plan.service)
