"""The pieces of the ``call`` step (edm_runner/operators/calls/) against a real HTTP server
(tests/helpers/fake_api.py): limits, retries, the circuit breaker, the cache."""
from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from edm_runner.operators.calls.breaker import CircuitBreaker
from edm_runner.operators.calls.cache import ResponseCache
from edm_runner.operators.calls.client import Breakers, CallFailed, Request, call, endpoint
from edm_runner.errors import EventError
from edm_runner.operators.api import PauseTask
from edm_runner.language.model import ResourceSpec
from edm_runner.operators.calls.limits import Quota, Resource, TokenBucket
from edm_runner.operators.calls.retry import RetryPolicy, parse_retry_after
from tests.helpers.fake_api import FakeApi

FAST = RetryPolicy(attempts=3, initial=0.01, max_delay=0.05)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


async def _with_api(body, **knobs):
    api = await FakeApi(**knobs).start()
    try:
        async with aiohttp.ClientSession() as session:
            return await body(api, session)
    finally:
        await api.stop()


def test_token_bucket_spends_the_burst_then_spaces_tokens():
    clock = Clock()
    bucket = TokenBucket(rate=10, per=1.0, burst=3, clock=clock)

    async def take(n):
        for _ in range(n):
            await bucket.acquire()

    run(take(3))
    assert bucket.delay() == pytest.approx(0.1)
    clock.t += 0.05
    assert bucket.delay() == pytest.approx(0.05)
    clock.t += 10  # refills to the burst, no more
    run(take(3))
    assert bucket.delay() > 0


def test_the_rate_limit_holds_at_the_server():
    """40 concurrent calls through a resource of 20/s with a burst of 5: in no second does the
    server see more than burst + rate."""
    resource = Resource(ResourceSpec("api", rate=20, per_ms=1000, burst=5))

    async def body(api, session):
        await asyncio.gather(*(call(session, Request("GET", f"{api.url}/items/k{i}"), FAST, 5, [resource], None)
                               for i in range(40)))
        return api

    api = run(_with_api(body))
    assert len(api.calls) == 40
    assert api.max_in_window(1.0) <= 25


def test_max_in_flight_caps_concurrent_requests():
    resource = Resource(ResourceSpec("api", max_in_flight=3))

    async def body(api, session):
        await asyncio.gather(*(call(session, Request("GET", f"{api.url}/items/k{i}"), FAST, 5, [resource], None)
                               for i in range(12)))
        return api

    api = run(_with_api(body, latency=0.05))
    assert len(api.calls) == 12 and api.open_peak == 3


def test_divide_by_instances_splits_a_cluster_budget():
    spec = ResourceSpec("api", rate=100, burst=10, max_in_flight=8, quota=1000, divide_by_instances=4)
    per = spec.per_instance()
    assert (per.rate, per.burst, per.max_in_flight, per.quota) == (25, 2, 2, 250)
    assert ResourceSpec("api", rate=3, divide_by_instances=4).per_instance().rate == 1


def test_a_quota_stops_calls_and_resumes_at_the_next_period():
    wall = Clock(100.0)
    quota = Quota(limit=3, period=10.0, wall=wall)

    async def body():
        for _ in range(3):
            await quota.acquire()
        assert quota.delay() == pytest.approx(10.0)
        wall.t = 107.5
        assert quota.delay() == pytest.approx(2.5)
        wall.t = 110.0  # the next period
        assert quota.delay() == 0
        await quota.acquire()
        assert quota.remaining() == 2

    run(body())


def test_a_quota_holds_at_the_server_across_periods():
    """Real clock: a quota of 4 per 0.5 s; 10 calls are sent in at least 3 periods, at most 4
    each, and the server gets all 10. The period of a call is the one its unit was counted in (a
    response may come back in the next period on a loaded machine: not a breach)."""
    resource = Resource(ResourceSpec("api", quota=4, quota_period_ms=500))
    quota = resource.quota
    periods = []
    acquire = quota.acquire

    async def counted() -> None:
        await acquire()
        periods.append(quota._period_index)

    quota.acquire = counted

    async def body(api, session):
        await asyncio.gather(*(call(session, Request("GET", f"{api.url}/items/k{i}"), FAST, 5, [resource], None)
                               for i in range(10)))
        return api

    api = run(_with_api(body))
    counts = {p: periods.count(p) for p in set(periods)}
    assert len(api.calls) == 10 and len(periods) == 10
    assert len(counts) >= 3 and max(counts.values()) <= 4, counts


def test_retry_after_is_waited_then_the_call_succeeds():
    async def body(api, session):
        response = await call(session, Request("POST", f"{api.url}/items/a", {"x": 1}), FAST, 5, [], None)
        return api, response

    api, response = run(_with_api(body, script=[(429, {"Retry-After": "1"})]))
    assert response.status == 200 and response.body["echo"] == {"x": 1}
    assert len(api.calls) == 2
    assert api.calls[1].at - api.calls[0].at >= 1.0


def test_retries_exhaust_into_a_call_failed_with_the_last_status_and_body():
    async def body(api, session):
        with pytest.raises(CallFailed) as failed:
            await call(session, Request("GET", f"{api.url}/items/a"), FAST, 5, [], None)
        return api, failed.value

    api, error = run(_with_api(body, script=[500, 502, 503]))
    assert len(api.calls) == 3
    headers = dict(error.dead_letter_headers)
    assert headers["edm.call.status"] == b"503" and headers["edm.call.attempts"] == b"3"
    assert b"status 503" in headers["edm.call.body"]
    assert "after 3 attempt(s)" in str(error)


def test_a_failing_status_is_not_retried():
    async def body(api, session):
        with pytest.raises(CallFailed, match="answered HTTP 400, which fails the event"):
            await call(session, Request("GET", f"{api.url}/items/a"), FAST, 5, [], None)
        return api

    assert len(run(_with_api(body, fail_keys={"a": 400})).calls) == 1


def test_a_status_listed_as_success_is_a_success():
    policy = RetryPolicy(attempts=3, initial=0.01, success=("2xx", 404))

    async def body(api, session):
        return await call(session, Request("GET", f"{api.url}/items/a"), policy, 5, [], None)

    assert run(_with_api(body, fail_keys={"a": 404})).status == 404


def test_timeouts_are_retried_then_fail():
    async def body(api, session):
        with pytest.raises(CallFailed) as failed:
            await call(session, Request("GET", f"{api.url}/items/a"), FAST, 0.2, [], None)
        return api, failed.value

    api, error = run(_with_api(body, hang=True))
    assert len(api.calls) == 3
    assert dict(error.dead_letter_headers)["edm.call.status"] == b"none"


def test_backoff_starts_from_retry_after_grows_and_is_capped():
    policy = RetryPolicy(initial=0.1, multiplier=2, max_delay=1.0, jitter=0.2, rng=random.Random(1))
    assert 0.1 <= policy.delay(1) <= 0.12
    assert 0.4 <= policy.delay(3) <= 0.48
    assert 1.0 <= policy.delay(10) <= 1.2
    assert 5.0 <= policy.delay(1, retry_after=5.0) <= 6.0  # never below what the server asked
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_the_breaker_opens_pauses_callers_and_closes_on_a_successful_probe():
    """Open: a caller gets PauseTask at once (the runtime pauses its partitions: nothing waits
    inside a run); at ``ready`` (half-open) the callers come back, one is the probe and the
    others wait for its outcome."""
    breakers = Breakers(threshold=2, open_for=0.3)
    once = RetryPolicy(attempts=2, initial=0.01)

    async def body(api, session):
        url = f"{api.url}/items/a"
        with pytest.raises(CallFailed):
            await call(session, Request("GET", url), once, 5, [], breakers)
        breaker = breakers(url)
        assert breaker.state == "open" and len(api.calls) == 2
        api.outage = False
        with pytest.raises(PauseTask) as paused:
            await call(session, Request("GET", f"{api.url}/items/b0"), once, 5, [], breakers)
        assert "circuit breaker of http://127.0.0.1:" in str(paused.value)
        assert len(api.calls) == 2  # nothing goes out while it is open
        await paused.value.until()
        assert breaker.state == "half_open"
        results = await asyncio.gather(*(call(session, Request("GET", f"{api.url}/items/b{i}"), once, 5, [],
                                              breakers) for i in range(5)))
        return api, breaker, results

    api, breaker, results = run(_with_api(body, outage=True))
    assert all(r.status == 200 for r in results)
    assert breaker.state == "closed" and breaker.opened == 1
    assert len(api.calls) == 2 + 5  # one probe then the four others, none repeated
    probe_at = api.calls[2].at
    assert all(c.at >= probe_at for c in api.calls[3:])


def test_callers_waiting_on_a_failed_probe_are_paused():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, open_for=5.0, clock=clock)

    async def body():
        breaker.failure(False)
        clock.t += 5
        assert await breaker.permit() is True  # the probe
        waiter = asyncio.ensure_future(breaker.permit())
        await asyncio.sleep(0)
        assert not waiter.done()  # half-open: waits for the probe's outcome
        breaker.failure(True)
        with pytest.raises(PauseTask):
            await waiter

    run(body())


def test_a_failed_probe_opens_the_breaker_again():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, open_for=5.0, clock=clock)

    async def body():
        assert await breaker.permit() is False
        breaker.failure(False)
        assert breaker.state == "open"
        with pytest.raises(PauseTask):
            await breaker.permit()
        clock.t += 5
        await breaker.ready()
        assert await breaker.permit() is True  # the probe
        breaker.failure(True)
        assert breaker.state == "open" and breaker.opened == 2
        clock.t += 5
        probe = await breaker.permit()
        breaker.success(probe)
        assert breaker.state == "closed"

    run(body())


def test_the_cache_expires_and_evicts_the_least_recently_used():
    clock = Clock()
    cache = ResponseCache(size=2, ttl=10, clock=clock)
    cache.put("a", 1)
    cache.put({"k": "b"}, 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts {"k": "b"}: "a" was used since
    assert cache.get({"k": "b"}) is None and cache.get("c") == 3
    clock.t += 10
    assert cache.get("a") is None and len(cache) == 1


def test_endpoints_group_urls_by_origin():
    assert endpoint("https://api.example.com/v1/x?y=1") == "https://api.example.com:443"
    assert endpoint("http://127.0.0.1:8099/items/a") == "http://127.0.0.1:8099"


def test_a_bad_url_or_body_fails_the_event_at_once_without_touching_the_breaker():
    breakers = Breakers(threshold=1, open_for=60)

    async def body(api, session):
        for url in ("http://", f"{api.url.replace('127.0.0.1', '127.0.0.1:99999')}/items/a"):
            with pytest.raises(CallFailed, match="not a valid URL"):
                await call(session, Request("GET", url), FAST, 5, [], breakers)
        with pytest.raises(EventError, match="not JSON"):
            await call(session, Request("POST", f"{api.url}/items/a", {"x": b"bytes"}), FAST, 5, [], breakers)
        return api

    assert run(_with_api(body)).calls == []
    assert all(b.state == "closed" for b in breakers.by_endpoint.values())
