"""Running one or several microservices (a business topology) concurrently in one process."""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError
from edm_runner.invocation import Invocation
from edm_runner.runtime.service import ServiceRunner
from edm_runner.runtime.stats import RunStats, ServiceStats
from edm_runner.language.model import Topology

POLL_MS = 100
IDLE_POLL_MS = 10
PROGRESS_INTERVAL_S = 1.0

log = logging.getLogger("edm.runtime")


class _IdleTracker:
    """Decides when a set of services is idle as a whole.

    ``generation`` grows after every durable write of any service. A service reports idle
    with the generation it saw when it found all its partitions consumed to the end; the
    set is idle when every service reported the current generation, i.e. nothing was
    written since each of them last looked.
    """

    def __init__(self, names: list[str]) -> None:
        self.generation = 0
        self.idle_at: dict[str, int] = dict.fromkeys(names, -1)

    def activity(self) -> None:
        self.generation += 1

    def idle(self, name: str) -> bool:
        self.idle_at[name] = self.generation
        return all(g == self.generation for g in self.idle_at.values())


async def run_services(services: list[Topology], broker: Broker, *, until_idle: bool = False,
                       stop: asyncio.Event | None = None,
                       on_progress: Callable[[RunStats], None] | None = None,
                       create_topics: bool = True, state_dir: Path | None = None,
                       shutdown_grace_ms: int | None = None,
                       invocation: Invocation | None = None) -> RunStats:
    """Runs ``services`` on ``broker``, each in its own consumer group (its name).

    Returns when ``stop`` is set (each service finishes its batch, flushes and commits),
    when ``until_idle`` and no service has anything left to consume (including records
    another service just wrote), or raises the first error (``ProcessingError`` under the
    fail policy) after the other services have stopped cleanly. Without ``create_topics``,
    topics are never created: a missing one is a ``BrokerError`` listing them. Local state
    (stores, tables) lives under ``state_dir`` (default: ``.edm`` beside each topology file).
    ``invocation`` (how the user ran edm) is repeated by hints that name a command.

    Shutdown on ``stop`` (SIGTERM): each service finishes its batch, flushes, commits, writes
    its checkpoints and closes its stores, all within ``shutdown_grace_ms`` of ``stop`` (default:
    the longest ``processing.shutdown_grace`` of the services); work
    still running then (a long restore, a batch) is cancelled, and a close that overruns is
    an ``EdmError`` (the caller exits non-zero; restores resume from their checkpoints).
    """
    if shutdown_grace_ms is None:
        shutdown_grace_ms = max(t.processing.shutdown_grace_ms for t in services)
    stats = RunStats({t.name: ServiceStats() for t in services})
    runners = [ServiceRunner(t, broker, stats.services[t.name], state_dir, invocation) for t in services]
    for runner in runners:
        await runner.provision(create_topics)
    halt = asyncio.Event()
    tracker = _IdleTracker([r.name for r in runners])
    poll_ms = IDLE_POLL_MS if until_idle else POLL_MS

    def stopping() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())

    async def loop(runner: ServiceRunner) -> None:
        try:
            while not stopping():
                if await runner.poll(poll_ms):
                    tracker.activity()
                elif until_idle:
                    if runner.uncommitted:
                        await runner.commit_now()
                        tracker.activity()
                    elif await runner.caught_up() and tracker.idle(runner.name):
                        halt.set()
        except BaseException:
            halt.set()
            raise

    async def progress() -> None:
        while not stopping():
            try:
                await asyncio.wait_for(halt.wait(), PROGRESS_INTERVAL_S)
            except TimeoutError:
                on_progress(stats)

    started: list[ServiceRunner] = []
    errors: list[BaseException] = []
    reporter = asyncio.create_task(progress()) if on_progress is not None else None

    async def run() -> None:
        for runner in runners:
            started.append(runner)  # ``close`` copes with a start cut short
            await runner.start()
        results = await asyncio.gather(*(loop(r) for r in runners), return_exceptions=True)
        errors.extend(e for e in results if isinstance(e, BaseException))

    deadline: float | None = None
    main = asyncio.ensure_future(run())
    try:
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set():
                deadline = time.monotonic() + shutdown_grace_ms / 1000
                await asyncio.wait({main}, timeout=shutdown_grace_ms / 1000)
                if not main.done():
                    log.warning("stopping: cancelling the work in progress to close within the "
                                "%d ms grace period", shutdown_grace_ms)
                    main.cancel()
        try:
            await main
        except asyncio.CancelledError:
            if deadline is None:
                raise
    finally:
        halt.set()
        for runner in started:
            try:
                if deadline is None:
                    await runner.close()
                else:
                    await asyncio.wait_for(runner.close(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                errors.append(EdmError(
                    f"service '{runner.name}' did not close within the {shutdown_grace_ms} ms shutdown "
                    "grace period; its last batch is processed again on restart (at-least-once). "
                    "Raise the grace period if the broker is slow to acknowledge"))
            except Exception as exc:
                errors.append(exc)
        if reporter is not None:
            await reporter
    if errors:
        raise errors[0]
    if on_progress is not None:
        on_progress(stats)
    return stats
