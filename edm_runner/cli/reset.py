"""`edm reset`: make a service reprocess its inputs from scratch."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edm_runner.cli.common import (BrokerOption, FileArgument, StateDirOption, app, connected, fail, guarded,
                                   invocation_of, load, local_state_dir, open_broker, services_of)
from edm_runner.errors import EdmError

if TYPE_CHECKING:
    from edm_runner.runtime.reset import ResetPlan


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


def _render(plan: ResetPlan) -> str:
    """A reset plan as `edm reset` prints it before it changes anything."""
    lines = [f"reset plan for service {plan.service} on {plan.broker} (edm reset stops nothing: "
             "every instance of the service must be stopped)"]
    lines.append(f"  group {plan.service}: input offsets")
    for tp, (old, new) in sorted(plan.offsets.items()):
        end = " (its end: this reset's services write it again)" if tp.topic in plan.rewritten else ""
        lines.append(f"    {tp.topic}[{tp.partition}]: {'none' if old is None else old} -> {new}{end}")
    if not plan.offsets:
        lines.append("    none (no input topic exists yet)")
    lines.append("  internal topics to delete:")
    lines += [f"    {t}" for t in plan.topics] or ["    none"]
    lines.append("  local state to wipe:")
    lines.append(f"    {plan.state}" if plan.state is not None else "    none")
    return "\n".join(lines)


@app.command()
def reset(
    file: FileArgument,
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
        from edm_runner.runtime.reset import apply_reset, plan_resets
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
                plans = await plan_resets(services, connection, local_state, since, again)
                for plan in plans:
                    typer.echo(_render(plan))
                if dry_run:
                    typer.echo("dry run: nothing changed")
                    return
                for plan in plans:
                    await apply_reset(plan, connection)
                    typer.echo(f"reset {plan.service}: done")

        asyncio.run(go())
        return 0
    guarded(body)
