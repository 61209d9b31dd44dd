"""`edm run`: runs the services until stopped (or idle); on a terminal, restore bars and a live
status line (``cli.live``)."""
from __future__ import annotations

import asyncio
import re
import signal
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edm_runner.cli.common import (BrokerOption, FileArgument, NoCodeOption, StateDirOption, app, connected, guarded,
                                   invocation_of, load, local_state_dir, log, open_broker, services_of,
                                   setup_logging)
from edm_runner.errors import EdmError

if TYPE_CHECKING:
    from edm_runner.cli.live import LiveDisplay


@app.command()
def run(
    file: FileArgument,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Stop when every input is drained.")] = False,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
    no_code: NoCodeOption = False,
    no_create_topics: Annotated[bool, typer.Option(
        "--no-create-topics",
        help="Do not create topics (they are managed elsewhere): missing ones are an error listing them.")] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    instance_id: Annotated[Optional[str], typer.Option(
        "--instance-id", envvar="EDM_INSTANCE_ID",
        help="Static group membership id of this instance (e.g. the pod name); replaces "
             "processing.instance_id.")] = None,
) -> None:
    """Run a microservice topology, or every microservice of a business topology."""
    setup_logging(log_level)

    def body() -> int:
        from edm_runner.runtime import run_services
        from edm_runner.state.progress import observe
        topology = load(file, no_code)
        services = services_of(topology)
        if instance_id:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,248}", instance_id):
                raise EdmError(f"invalid --instance-id {instance_id!r}: use letters, digits, '.', '_' "
                               "and '-', starting with a letter or digit")
            for service in services:
                service.processing.instance_id = instance_id
        attach = None
        if any(service.http is not None for service in services):
            from edm_runner.serve.server import attach  # aiohttp only for services that answer HTTP
        connection = open_broker(topology, file, broker, state_dir)
        invocation = invocation_of(topology, file, broker=broker, state_dir=state_dir)

        stopped_by: list[signal.Signals] = []

        def on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
            stopped_by.append(sig)
            stop.set()

        async def go():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig, stop)
            async with connected(connection, invocation):
                log.info("running %s on %s", ", ".join(s.name for s in services), connection.describe())
                return await run_services(services, connection, until_idle=until_idle, stop=stop,
                                          on_progress=display.stats if display else None,
                                          create_topics=not no_create_topics,
                                          state_dir=local_state_dir(file, state_dir),
                                          invocation=invocation, attach=attach)

        with ExitStack() as stack:
            display = stack.enter_context(_live_display()) if sys.stderr.isatty() else None
            if display is not None:
                stack.enter_context(observe(display.restore))
            stats = asyncio.run(go())
        typer.echo(_run_summary(topology.name, stats), err=True)
        # SIGTERM is the orchestrator's normal stop; SIGINT (Ctrl-C) an interruption.
        return 128 + signal.SIGINT if stopped_by[:1] == [signal.SIGINT] else 0
    guarded(body)


def _live_display() -> LiveDisplay:
    from rich.console import Console

    from edm_runner.cli.live import LiveDisplay
    return LiveDisplay(Console(stderr=True))


def _run_summary(name: str, stats) -> str:
    """The line `edm run` ends with: the user's streams in and out, then what went through
    internal (repartition) topics, apart; late events come with what to do about them."""
    line = (f"{name}: {stats.events_in} in, {stats.events_out} out, {stats.skipped} skipped, "
            f"{stats.dead_lettered} dead-lettered, {stats.late} late, {stats.restored} restored")
    if stats.internal_in or stats.internal_out:
        line += f" (internal topics: {stats.internal_in} in, {stats.internal_out} out)"
    if stats.late:
        line += (f"\n{stats.late} late event(s) dropped: their event time was behind the stream time "
                 "by more than the window's grace period, so their window had closed. Give the "
                 "window a grace period as long as the disorder of its input (`window: {..., grace: "
                 "1h}`); after a group_by or repartition the input partitions interleave, so the "
                 "disorder is at least the time skew between them (docs/language.md, \"Event time\").")
    return line
