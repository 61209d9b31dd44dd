"""`edm reset`: make a service reprocess its inputs from scratch."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from edm_runner.cli.common import (BrokerOption, StateDirOption, app, connected, fail, guarded, invocation_of,
                                   load, local_state_dir, open_broker, services_of)
from edm_runner.errors import EdmError


def _parse_datetime(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date-time; without an offset it is UTC."""
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise EdmError(f"--to-datetime {text!r} is not an ISO 8601 date-time; write e.g. "
                       "2026-11-23T10:00:00Z or 2026-11-23T11:00:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass
class _ResetPlan:
    """What ``edm reset`` does to one service. ``offsets``: input partition -> (committed
    offset or None, new offset). ``rewritten``: the input topics set to their end instead,
    because the services being reset write them (the reprocessing writes their records
    again). ``topics``: existing internal topics to delete. ``state``: the service's local
    state directory when it exists."""

    service: str
    broker: str
    offsets: dict = field(default_factory=dict)
    rewritten: set[str] = field(default_factory=set)
    topics: list[str] = field(default_factory=list)
    state: Path | None = None
    state_dir: Path = Path()

    def format(self) -> str:
        lines = [f"reset plan for service {self.service} on {self.broker} (edm reset stops nothing: "
                 "every instance of the service must be stopped)"]
        lines.append(f"  group {self.service}: input offsets")
        for tp, (old, new) in sorted(self.offsets.items()):
            end = " (its end: this reset's services write it again)" if tp.topic in self.rewritten else ""
            lines.append(f"    {tp.topic}[{tp.partition}]: {'none' if old is None else old} -> {new}{end}")
        if not self.offsets:
            lines.append("    none (no input topic exists yet)")
        lines.append("  internal topics to delete:")
        lines += [f"    {t}" for t in self.topics] or ["    none"]
        lines.append("  local state to wipe:")
        lines.append(f"    {self.state}" if self.state is not None else "    none")
        return "\n".join(lines)


@dataclass(frozen=True)
class _ResetTopics:
    """What ``edm reset`` touches of one service. ``inputs``: the declared topics its group
    consumes (sources and table sources; global tables are read without the group).
    ``internal``: the topics the runtime creates beyond the declared streams (repartition
    topics, store changelogs). ``written``: the declared topics its pipelines write."""

    inputs: set[str]
    internal: set[str]
    written: set[str]


def _reset_topics(topology) -> _ResetTopics:
    from edm_runner.runtime.processing import CompiledService
    from edm_runner.runtime.service import topic_specs
    from edm_runner.runtime.stats import ServiceStats
    compiled = CompiledService(topology, ServiceStats())
    declared = {s.topic for s in topology.streams.values()}
    internal = {spec.name for spec in topic_specs(topology, compiled)} - declared
    tables = {topology.streams[t.source].topic for t in topology.tables.values()}
    written = {t for node in compiled.dag.sinks() for t in node.topics} - internal
    return _ResetTopics((set(compiled.dag.source_topics()) | tables) - internal, internal, written)


async def _reset_plan(topology, topics: _ResetTopics, broker, state_dir: Path, since_ms: int | None,
                      again: str, rewritten: set[str]) -> _ResetPlan:
    """``again``: the command line that runs this reset again. ``rewritten``: the topics the
    services being reset write. An input among them is set to its end, not to its beginning
    (or ``since_ms``): the reprocessing writes its records again, and reading the old ones
    too would process every one of them twice (a count downstream would double)."""
    from edm_runner.brokers.base import TopicPartition
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
    return _ResetPlan(group, broker.describe(), {tp: (committed.get(tp), targets[tp]) for tp in tps},
                      rewritten & topics.inputs, sorted(topics.internal & set(existing)),
                      local if local.exists() else None, state_dir)


async def _apply_reset(plan: _ResetPlan, broker) -> None:
    """Offsets first, then topics, then local state; each step is idempotent, so a reset
    interrupted half-way is completed by running it again."""
    from edm_runner.state.offline import wipe
    await broker.set_group_offsets(plan.service, {tp: new for tp, (_, new) in plan.offsets.items()})
    await broker.delete_topics(plan.topics)
    if plan.state is not None:
        wipe(plan.state_dir, plan.service)


@app.command()
def reset(
    file: Path,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    to_earliest: Annotated[bool, typer.Option(
        "--to-earliest", help="Reprocess every input from its first event (the default).")] = False,
    to_datetime: Annotated[Optional[str], typer.Option(
        "--to-datetime", metavar="T",
        help="Reprocess inputs from the first event at or after T (ISO 8601; UTC without an offset).")] = None,
    service: Annotated[Optional[str], typer.Option(
        "--service", help="Only this microservice of a business topology.")] = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Make a service reprocess its inputs from scratch: reset its group's input offsets, delete
    its internal topics (changelogs, repartitions) and wipe its local state.

    It stops nothing itself: stop every instance of the service first (it refuses while one runs).
    The plan is printed before anything changes."""
    def body() -> int:
        if to_earliest and to_datetime is not None:
            raise fail("--to-earliest and --to-datetime exclude each other; give one", 2)
        since = _parse_datetime(to_datetime) if to_datetime is not None else None
        topology = load(file)
        services = services_of(topology, service)
        connection = open_broker(topology, file, broker, state_dir)
        local_state = local_state_dir(file, state_dir)
        invocation = invocation_of(topology, file, broker=broker, state_dir=state_dir, service=service)
        again = invocation.command("reset", *(["--to-datetime", to_datetime] if to_datetime else []))

        async def go() -> None:
            async with connected(connection, invocation):
                topics = [_reset_topics(s) for s in services]
                rewritten = {t for each in topics for t in each.written}
                plans = [await _reset_plan(s, t, connection, local_state, since, again, rewritten)
                         for s, t in zip(services, topics)]
                for plan in plans:
                    typer.echo(plan.format())
                if dry_run:
                    typer.echo("dry run: nothing changed")
                    return
                for plan in plans:
                    await _apply_reset(plan, connection)
                    typer.echo(f"reset {plan.service}: done")

        asyncio.run(go())
        return 0
    guarded(body)
