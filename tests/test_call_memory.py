"""The memory of completed calls and quota counts (edm_runner/state/calls.py) on a real LMDB
environment, reopened as a restarted instance would; the end-to-end crash tests are in
tests/test_call_step.py."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edm_runner.operators.calls import memory as outcomes
from edm_runner.operators.calls.client import CallFailed, Request, Response
from edm_runner.operators.calls.limits import Quota
from edm_runner.state.calls import MAX_ENTRY, CallMemory, forget_results, result_key


def test_remembered_results_survive_a_reopen_and_are_forgotten_below_a_run_start(tmp_path: Path) -> None:
    async def first() -> None:
        memory = await CallMemory.open(tmp_path, "svc")
        await asyncio.gather(*(memory.remember(result_key("t", p, o, "p#0"), f"{p}/{o}".encode())
                               for p in (0, 1) for o in range(5)))
        await memory.remember(result_key("t", 0, 3, "p#1"), b"other step")
        await memory.remember(result_key("t", 0, 4, "p#0"), b"x" * (MAX_ENTRY + 1))  # too big: not kept
        await memory.aclose()

    async def second() -> None:
        memory = await CallMemory.open(tmp_path, "svc")
        assert memory.result(result_key("t", 0, 3, "p#0")) == b"0/3"
        assert memory.result(result_key("t", 0, 3, "p#1")) == b"other step"
        assert memory.result(result_key("t", 0, 4, "p#0")) == b"0/4"  # the earlier, smaller one stays
        memory.forget_below("t", 0, 3)  # a run of t/0 starts at offset 3
        await memory.remember(result_key("t", 0, 5, "p#0"), b"0/5")  # written with the forgetting
        assert [memory.result(result_key("t", 0, o, "p#0")) for o in range(6)] == [
            None, None, None, b"0/3", b"0/4", b"0/5"]
        assert memory.result(result_key("t", 1, 0, "p#0")) == b"1/0"  # another partition: kept
        await memory.aclose()

    asyncio.run(first())
    asyncio.run(second())


class Ledger:
    """What ``CallScope`` gives a quota: the memory's counts."""

    def __init__(self, memory: CallMemory) -> None:
        self.memory = memory

    async def quota_used(self, resource: str, period_ms: int) -> tuple[int, int] | None:
        return self.memory.quota_used(resource, period_ms)

    async def count(self, resource: str, period_ms: int, index: int, used: int) -> None:
        await self.memory.count(resource, period_ms, index, used)


def test_a_quota_continues_the_count_of_its_period_after_a_restart_and_a_reset(tmp_path: Path) -> None:
    wall = lambda: 1000.0  # noqa: E731  (the period [1000, 1100) throughout)

    async def take(n: int) -> Quota:
        memory = await CallMemory.open(tmp_path, "svc")
        quota = Quota(limit=5, period=100.0, wall=wall, ledger=Ledger(memory), name="api")
        try:
            await asyncio.gather(*(quota.acquire() for _ in range(n)))
        finally:
            await memory.aclose()
        return quota

    asyncio.run(take(3))
    forget_results(tmp_path, "svc")  # `edm reset`: the counts stay
    quota = asyncio.run(take(2))
    assert quota.remaining() == 0 and quota.delay() == pytest.approx(100.0)

    async def other_period() -> None:  # a count of another period, or of other periods, starts over
        memory = await CallMemory.open(tmp_path, "svc")
        assert memory.quota_used("api", 100_000) == (10, 5)
        assert memory.quota_used("api", 60_000) is None
        quota = Quota(limit=5, period=100.0, wall=lambda: 1100.0, ledger=Ledger(memory), name="api")
        await quota.acquire()
        assert quota.remaining() == 4
        await memory.aclose()

    asyncio.run(other_period())


def test_an_outcome_is_used_only_for_the_request_it_answered() -> None:
    request = Request("GET", "http://api/items/a", None, {"Idempotency-Key": "svc/t/0/7"})
    digest = outcomes.digest(request)
    ok = outcomes.decode(outcomes.encode(digest, Response(200, {"a": 1}, {"etag": "x"})), digest)
    assert ok == Response(200, {"a": 1}, {"etag": "x"})
    failed = outcomes.decode(outcomes.encode(digest, CallFailed("GET ... answered HTTP 400", 400, "bad", 1)), digest)
    assert isinstance(failed, CallFailed) and str(failed) == "GET ... answered HTTP 400"
    assert failed.dead_letter_headers == CallFailed("x", 400, "bad", 1).dead_letter_headers
    edited = outcomes.digest(Request("GET", "http://api/v2/items/a", None, request.headers))
    assert outcomes.decode(outcomes.encode(digest, Response(200, None, {})), edited) is None
    assert outcomes.decode(b"not json", digest) is None
