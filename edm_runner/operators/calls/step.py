"""The ``call`` step: one HTTP request per event (``client.call``), awaited by the runtime with
many events in flight (an ``AsyncPerEventProcessor``, docs/design/concurrency.md).

One ``CallScope`` per service (``BuildContext.shared``): the aiohttp session every call step
of the service uses (created in the running loop on first use, closed when the service stops),
the named resources, so two steps naming one resource share its budget, and (under ``edm run``,
which gives a state directory) the instance's memory of completed calls and quota counts
(``state.calls``, docs/design/calls.md "Replays").
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from edm_runner.errors import EventError
from edm_runner.language.durations import parse_duration
from edm_runner.language.model import StepSpec, Topology
from edm_runner.operators.api import AsyncPerEventProcessor, BuildContext, Event, ExprFn, PauseTask
from edm_runner.operators.calls.cache import ResponseCache
from edm_runner.operators.calls import memory as outcomes
from edm_runner.operators.calls.client import Breakers, CallFailed, Carried, Request, Response, call
from edm_runner.operators.calls.limits import Resource
from edm_runner.operators.calls.retry import DEFAULT_RETRY, DEFAULT_SUCCESS, RetryPolicy
from edm_runner.state.calls import CallMemory, result_key

SCOPE = "call"  # its key in BuildContext.shared
MAX_CARRIED = 10_000  # events whose attempts carry over a pause, per step (the oldest dropped first)


class CallScope:
    """What the call steps of one service share. Invariant: one per running service."""

    def __init__(self, topology: Topology, state_dir: Path | None = None) -> None:
        self.service = topology.name
        self.state_dir = state_dir
        ledger = self if state_dir is not None else None
        self.resources = {name: Resource(spec, ledger=ledger) for name, spec in topology.resources.items()}
        self._memory: asyncio.Future[CallMemory] | None = None
        self._steps: dict[str, int] = {}  # pipeline -> its call steps built so far
        self._session: aiohttp.ClientSession | None = None
        # Name (a resource, or a pipeline) -> a stand-in for the session: `edm test`'s mocks.
        # A step uses the first of its names found here, else the real session.
        self.mocks: dict[str, Any] = {}

    def step_name(self, pipeline: str) -> str:
        """``pipeline#N``: the N-th call step of ``pipeline`` built (steps are built once each, in
        the topology's order), its name in the memory of completed calls."""
        n = self._steps[pipeline] = self._steps.get(pipeline, -1) + 1
        return f"{pipeline}#{n}"

    def session_for(self, names: list[str]) -> Any:
        """The session a step with these names (its resources, then its pipeline) calls through."""
        for name in names:
            mock = self.mocks.get(name)
            if mock is not None:
                return mock
        return self.session()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def memory(self) -> CallMemory | None:
        """The instance's memory of completed calls (opened on first use); None without a
        state directory (``edm test``)."""
        if self.state_dir is None:
            return None
        if self._memory is None:
            self._memory = asyncio.ensure_future(CallMemory.open(self.state_dir, self.service))
        return await asyncio.shield(self._memory)

    async def run_starts(self, topic: str, partition: int, offset: int) -> None:
        """A run of ``topic``/``partition`` starts at ``offset``: the runner committed every offset
        before it (docs/design/concurrency.md), so the results remembered below it are forgotten."""
        memory = await self.memory()
        if memory is not None:
            memory.forget_below(topic, partition, offset)

    async def quota_used(self, resource: str, period_ms: int) -> tuple[int, int] | None:
        memory = await self.memory()
        return memory.quota_used(resource, period_ms) if memory is not None else None

    async def count(self, resource: str, period_ms: int, index: int, used: int) -> None:
        memory = await self.memory()
        if memory is not None:
            await memory.count(resource, period_ms, index, used)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._memory is not None:
            memory, self._memory = self._memory, None
            await (await memory).aclose()


def scope(ctx: BuildContext) -> CallScope:
    found = ctx.shared.get(SCOPE)
    if found is None:
        found = ctx.shared[SCOPE] = CallScope(ctx.topology, ctx.state_dir)
    return found


class CallStep(AsyncPerEventProcessor):
    label = "call"

    def __init__(self, step: StepSpec, ctx: BuildContext) -> None:
        cfg: dict[str, Any] = step.config
        self.pos = step.pos
        self.scope = scope(ctx)
        compile_ = ctx.compile
        self.url: ExprFn = compile_(cfg["url"], step.pos)
        self.body: ExprFn | None = compile_(cfg["body"], step.pos) if "body" in cfg else None
        self.method = cfg.get("method", "POST" if "body" in cfg else "GET")
        self.headers = {name: compile_(source, step.pos) for name, source in cfg.get("headers", {}).items()}
        self.timeout = parse_duration(cfg.get("timeout", "10s")) / 1000
        names = cfg.get("resources", [])
        self.resources = [self.scope.resources[n] for n in ([names] if isinstance(names, str) else names)]
        self.names = [*([names] if isinstance(names, str) else names), ctx.pipeline]  # what a mock may name
        self.into = cfg.get("into", "response")
        self.keep_headers = tuple(cfg.get("response_headers", ()))
        retry = cfg.get("retry", {})
        self.policy = RetryPolicy(attempts=retry.get("attempts", 5),
                                  initial=parse_duration(retry.get("backoff", "100ms")) / 1000,
                                  max_delay=parse_duration(retry.get("max_backoff", "30s")) / 1000,
                                  success=tuple(cfg.get("success", DEFAULT_SUCCESS)),
                                  retry=tuple(retry.get("statuses", DEFAULT_RETRY)))
        breaker = cfg.get("breaker", {})
        self.breakers = None if breaker is False else Breakers(
            breaker.get("failures", 5), parse_duration(breaker.get("open_for", "30s")) / 1000)
        cache = cfg.get("cache")
        self.cache = ResponseCache(cache.get("size", 10_000), parse_duration(cache["ttl"]) / 1000) if cache else None
        self.cache_key = compile_(cache["key"], step.pos) if cache and "key" in cache else None
        self._pending: dict[str, asyncio.Future[Response | None]] = {}  # cache key -> the call under way
        self._carried: dict[tuple, Carried] = {}  # an event given up by a pause -> its attempts so far
        idem = cfg.get("idempotency_key", {})
        self.idem_header = None if idem is False else idem.get("header", "Idempotency-Key")
        self.idem_value = compile_(idem["value"], step.pos) if idem and "value" in idem else None
        # The memory of completed calls: this step's name in its keys, and the pipeline's
        # deliveries (a failure is remembered only at the last one: the earlier ones are retried).
        self.memory_name = self.scope.step_name(ctx.pipeline)
        pipeline = ctx.topology.pipelines.get(ctx.pipeline)
        self.deliveries = pipeline.processing.attempts if pipeline is not None else 1

    def request(self, e: Event) -> Request:
        k, v = e.key, e.value
        url = self.url(k, v, e)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EventError(f"the url expression gave {url!r}; it must give an http:// or https:// URL")
        headers = {name: str(fn(k, v, e)) for name, fn in self.headers.items()}
        if self.idem_header is not None:
            headers[self.idem_header] = (str(self.idem_value(k, v, e)) if self.idem_value is not None
                                         else f"{self.scope.service}/{e.topic}/{e.partition}/{e.offset}")
        return Request(self.method, url, self.body(k, v, e) if self.body is not None else None, headers)

    async def process_one_async(self, event: Event) -> list[Event]:
        if not isinstance(event.value, dict):
            raise EventError(f"call puts the response into the value's field {self.into!r}, so the value must be a "
                             f"mapping, got {type(event.value).__name__}; map_values it into one first "
                             f"(\"{{'payload': value}}\")")
        request = self.request(event)
        memory = await self.scope.memory()
        if memory is None:
            response = await self._respond(event, request)
        else:
            response = await self._remembered(memory, event, request)
        event.value = {**event.value, self.into: response.as_value()}
        return [event]

    async def _respond(self, event: Event, request: Request) -> Response:
        """The call's response; the attempts of an event given up by a pause carry over to its
        next delivery (``Carried``, kept per event and request until the call ends)."""
        identity = (event.topic, event.partition, event.offset, request.method, request.url)
        carried = self._carried.pop(identity, None) or Carried()
        try:
            if self.cache is None:
                return await self._call(request, carried)
            return await self._cached(request, self._cache_key_of(event, request), carried)
        except PauseTask:
            if carried.attempts:
                if len(self._carried) >= MAX_CARRIED:  # events of a partition revoked meanwhile
                    del self._carried[next(iter(self._carried))]
                self._carried[identity] = carried
            raise

    def _cache_key_of(self, event: Event, request: Request) -> Any:
        return (self.cache_key(event.key, event.value, event) if self.cache_key is not None
                else [request.method, request.url])

    async def _remembered(self, memory: CallMemory, event: Event, request: Request) -> Response:
        """The outcome remembered for ``event`` (from before a crash), else the call's, which is
        remembered before it is returned: the event finishes (and its offset may be committed)
        only once its outcome is durable. A cached answer is not remembered: no request went out
        (an fsynced write per cache hit would cost more than the call it saved)."""
        if self.cache is not None and (hit := self.cache.get(self._cache_key_of(event, request))) is not None:
            return hit
        digest = outcomes.digest(request)
        # The request in the key too: the events a flat_map splits one record into share its offset.
        key = result_key(event.topic, event.partition, event.offset, f"{self.memory_name}/{digest}")
        raw = memory.result(key)
        outcome = outcomes.decode(raw, digest) if raw is not None else None
        if isinstance(outcome, CallFailed):
            raise outcome
        if outcome is not None:
            return outcome
        try:
            response = await self._respond(event, request)
        except CallFailed as failed:
            if self._last_delivery(event):
                await memory.remember(key, outcomes.encode(digest, failed))
            raise
        await memory.remember(key, outcomes.encode(digest, response))
        return response

    def _last_delivery(self, event: Event) -> bool:
        if self.deliveries == 1:
            return True
        attempt = event.header_map.get("edm.delivery.attempt", "1")
        return attempt.isdigit() and int(attempt) >= self.deliveries

    async def _call(self, request: Request, carried: Carried) -> Response:
        return await call(self.scope.session_for(self.names), request, self.policy, self.timeout, self.resources,
                          self.breakers, self.keep_headers, carried)

    async def _cached(self, request: Request, key: Any, carried: Carried) -> Response:
        """The cached answer for ``key``; on a miss, one call per key at a time: the events that
        miss the same key meanwhile wait for its answer (and call themselves if it failed)."""
        assert self.cache is not None
        response = self.cache.get(key)
        if response is not None:
            return response
        name = self.cache.name(key)
        pending = self._pending.get(name)
        if pending is not None:
            response = await asyncio.shield(pending)
            if response is not None:
                return response
        leader = self._pending[name] = asyncio.get_running_loop().create_future()
        answer: Response | None = None
        try:
            answer = await self._call(request, carried)
            self.cache.put(key, answer)
            return answer
        finally:
            leader.set_result(answer)
            if self._pending.get(name) is leader:
                del self._pending[name]


def build_call_step(step: StepSpec, ctx: BuildContext) -> CallStep:
    return CallStep(step, ctx)
