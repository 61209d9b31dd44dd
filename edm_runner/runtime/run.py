"""Running one or several microservices (a business topology) concurrently in one process."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any, Callable

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError, ServicesFailed
from edm_runner.invocation import Invocation
from edm_runner.runtime.service import ServiceRunner
from edm_runner.runtime.stats import RunStats, ServiceStats
from edm_runner.runtime.view import ServiceView
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
                       invocation: Invocation | None = None,
                       attach: Callable[[ServiceView], AbstractAsyncContextManager[Any]] | None = None) -> RunStats:
    """Runs ``services`` on ``broker``, each in its own consumer group (its name).

    Returns when ``stop`` is set (each service finishes its batch, flushes and commits),
    when ``until_idle`` and no service has anything left to consume (including records
    another service just wrote), or raises the run's errors (``ProcessingError`` under the
    fail policy, a failed provision, start or close) after the other services have stopped
    cleanly: one error alone, several as a ``ServicesFailed`` that names each one's service.
    Without ``create_topics``,
    topics are never created: a missing one is a ``BrokerError`` listing them. Local state
    (stores, tables) lives under ``state_dir`` (default: ``.edm`` beside each topology file).
    ``invocation`` (how the user ran edm) is repeated by hints that name a command.
    ``attach``: entered per service, with its read-only ``ServiceView``, before the service
    joins its group, and exited after it closed (the request-response side: ``serve.server``,
    which the runtime does not import).

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
    run = _Run(runners, stats, until_idle=until_idle, stop=stop, on_progress=on_progress,
               shutdown_grace_ms=shutdown_grace_ms, attach=attach)
    await run.provision(create_topics)
    return await run.run()


class _Run:
    """One ``run_services`` call: provisions every runner (checking each service's topics
    against the broker: all of them, so that every service's problem is reported at once),
    starts them one after the other (the first failed start ends the run: starting joins
    groups and restores state), then drives one loop per service until the run halts (a
    service failed, every service is idle under ``until_idle``, or ``stop`` is set), then
    closes every runner it started.

    Invariants: ``halt`` is set once any loop ends with an error, once the set is idle, and when
    the run ends, so every loop and the progress reporter end with it; every runner whose
    ``start`` was called is closed (``close`` copes with a start cut short); after ``stop``,
    closing ends by ``deadline`` (work still running at the deadline is cancelled first); every
    error of a provision, a start, a loop or a close is kept in ``failures`` with its service's name.
    """

    def __init__(self, runners: list[ServiceRunner], stats: RunStats, *, until_idle: bool,
                 stop: asyncio.Event | None, on_progress: Callable[[RunStats], None] | None,
                 shutdown_grace_ms: int,
                 attach: Callable[[ServiceView], AbstractAsyncContextManager[Any]] | None = None) -> None:
        self.runners = runners
        self.attach = attach
        self.sides = AsyncExitStack()  # what ``attach`` entered, exited after the runners closed
        self.stats = stats
        self.until_idle = until_idle
        self.stop = stop
        self.on_progress = on_progress
        self.grace_ms = shutdown_grace_ms
        self.poll_ms = IDLE_POLL_MS if until_idle else POLL_MS
        self.halt = asyncio.Event()
        self.tracker = _IdleTracker([r.name for r in runners])
        self.started: list[ServiceRunner] = []
        self.failures: list[tuple[str, BaseException]] = []  # (service, error), in order
        self.deadline: float | None = None  # set by ``stop``: when the grace period ends

    async def provision(self, create_topics: bool) -> None:
        for runner in self.runners:
            try:
                await runner.provision(create_topics)
            except Exception as exc:
                self.failures.append((runner.name, exc))
        self._raise_failures()

    async def run(self) -> RunStats:
        reporter = asyncio.create_task(self._report_progress()) if self.on_progress is not None else None
        work = asyncio.ensure_future(self._start_and_loop())
        try:
            await self._until_done_or_stopped(work)
        finally:
            self.halt.set()
            await self._close_started()
            if reporter is not None:
                await reporter
        self._raise_failures()
        if self.on_progress is not None:
            self.on_progress(self.stats)
        return self.stats

    def _stopping(self) -> bool:
        return self.halt.is_set() or (self.stop is not None and self.stop.is_set())

    async def _start_and_loop(self) -> None:
        for runner in self.runners:
            self.started.append(runner)
            try:
                if self.attach is not None:
                    await self.sides.enter_async_context(self.attach(ServiceView(runner)))
                await runner.start()
            except Exception as exc:  # the runners after it never start; those started close
                self.failures.append((runner.name, exc))
                return
        results = await asyncio.gather(*(self._loop(r) for r in self.runners), return_exceptions=True)
        self.failures += [(r.name, e) for r, e in zip(self.runners, results) if isinstance(e, BaseException)]

    def _raise_failures(self) -> None:
        """One error alone, several as a ``ServicesFailed``; a cancellation or an interrupt
        (not an ``Exception``) is raised as it came."""
        errors: list[tuple[str, Exception]] = []
        for name, error in self.failures:
            if not isinstance(error, Exception):
                raise error
            errors.append((name, error))
        if len(errors) == 1:
            raise errors[0][1]
        if errors:
            raise ServicesFailed(errors)

    async def _loop(self, runner: ServiceRunner) -> None:
        """One service's batches until the run halts; an error halts every loop."""
        try:
            while not self._stopping():
                if await runner.poll(self.poll_ms):
                    self.tracker.activity()
                elif self.until_idle:
                    await self._idle(runner)
        except BaseException:
            self.halt.set()
            raise

    async def _idle(self, runner: ServiceRunner) -> None:
        """``runner`` found nothing to fetch: commit what it processed, else report it caught
        up, and halt the run when every service is."""
        if runner.uncommitted:
            await runner.commit_now()
            self.tracker.activity()
        elif await runner.caught_up() and self.tracker.idle(runner.name):
            self.halt.set()

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while not self._stopping():
            try:
                await asyncio.wait_for(self.halt.wait(), PROGRESS_INTERVAL_S)
            except TimeoutError:
                self.on_progress(self.stats)

    async def _until_done_or_stopped(self, work: asyncio.Future[None]) -> None:
        """Waits for ``work`` to end; on ``stop``, gives it the grace period, then cancels it."""
        if self.stop is not None:
            stopped = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if self.stop.is_set():
                await self._finish_within_grace(work)
        try:
            await work
        except asyncio.CancelledError:
            if self.deadline is None:  # cancelled from outside, not by the grace period
                raise

    async def _finish_within_grace(self, work: asyncio.Future[None]) -> None:
        self.deadline = time.monotonic() + self.grace_ms / 1000
        await asyncio.wait({work}, timeout=self.grace_ms / 1000)
        if not work.done():
            log.warning("stopping: cancelling the work in progress to close within the "
                        "%d ms grace period", self.grace_ms)
            work.cancel()

    async def _close_started(self) -> None:
        """Closes every started runner, each by the deadline when there is one, then exits
        what ``attach`` entered (the HTTP servers answer until their service closed)."""
        for runner in self.started:
            try:
                if self.deadline is None:
                    await runner.close()
                else:
                    await asyncio.wait_for(runner.close(), max(0.0, self.deadline - time.monotonic()))
            except TimeoutError:
                self.failures.append((runner.name, EdmError(
                    f"service '{runner.name}' did not close within the {self.grace_ms} ms shutdown "
                    "grace period; its last batch is processed again on restart (at-least-once). "
                    "Raise the grace period if the broker is slow to acknowledge")))
            except Exception as exc:
                self.failures.append((runner.name, exc))
        try:
            await self.sides.aclose()
        except Exception as exc:
            self.failures.append(("http server", exc))
