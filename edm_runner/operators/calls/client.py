"""One call: the attempt loop of the ``call`` step over an aiohttp session, under the step's
resources, retry policy and the endpoint's circuit breaker.

Per attempt, in this order: the breaker's permit (``PauseTask`` while it is open, using no attempt),
an in-flight slot, quota and a rate token of every resource (then the breaker once more: it may
have opened meanwhile), then the request. So the limits
govern every request that goes out, retries and replays included.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from edm_runner.errors import EventError
from edm_runner.operators.api import PauseTask
from edm_runner.operators.calls.breaker import CircuitBreaker
from edm_runner.operators.calls.limits import Resource, request_slot
from edm_runner.operators.calls.retry import RetryPolicy, parse_retry_after

BODY_EXCERPT = 512  # characters of the last answer's body kept in a dead letter


@dataclass
class Request:
    method: str
    url: str
    body: Any = None  # JSON-encoded when not None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    """What the next steps see: ``status``, ``body`` (parsed JSON, else the text; None when
    empty) and the selected ``headers`` (lower-case names)."""

    status: int
    body: Any
    headers: dict[str, str]

    def as_value(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body, "headers": self.headers}


class CallFailed(EventError):
    """The call did not succeed: a failing status, or every attempt used. Follows the
    pipeline's on_error; a dead letter carries the last status and a body excerpt."""

    def __init__(self, message: str, status: int | None, body: str, attempts: int) -> None:
        super().__init__(message)
        self.status, self.body, self.attempts = status, body[:BODY_EXCERPT], attempts
        self.dead_letter_headers = (
            ("edm.call.status", str(status if status is not None else "none").encode()),
            ("edm.call.body", body[:BODY_EXCERPT].encode("utf-8", "replace")),
            ("edm.call.attempts", str(attempts).encode()),
        )


def endpoint(url: str) -> str:
    """The breaker's unit: scheme://host:port of ``url``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class Breakers:
    """The circuit breakers of one step, one per endpoint, created on first use."""

    def __init__(self, threshold: int, open_for: float) -> None:
        self.threshold = threshold
        self.open_for = open_for
        self.by_endpoint: dict[str, CircuitBreaker] = {}

    def __call__(self, url: str) -> CircuitBreaker:
        key = endpoint(url)
        b = self.by_endpoint.get(key)
        if b is None:
            b = self.by_endpoint[key] = CircuitBreaker(self.threshold, self.open_for, name=key)
        return b


@dataclass
class Carried:
    """The attempts an event used before its partition paused (``PauseTask``), and the last
    failure's status and text: the event's next delivery goes on counting from there, so the
    probes of an endpoint that does not recover use the event's attempts up."""

    attempts: int = 0
    status: int | None = None
    text: str = ""


async def call(session: aiohttp.ClientSession, request: Request, policy: RetryPolicy, timeout: float,
               resources: list[Resource], breakers: Breakers | None,
               keep_headers: tuple[str, ...] = (), carried: Carried | None = None) -> Response:
    """The response of the first attempt whose status is a success, or ``CallFailed``. With
    ``carried``, attempts count on from it, and a pause records in it what was used."""
    try:
        data = None if request.body is None else json.dumps(request.body, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise EventError(f"the body expression gave a value that is not JSON: {e}") from None
    try:
        URL(request.url).origin()
    except ValueError as e:  # the event's URL, not the endpoint, is at fault: no retry, no breaker
        raise CallFailed(f"{request.method} {request.url}: not a valid URL ({e})", None, "", 0) from None
    breaker = breakers(request.url) if breakers is not None else None
    headers = dict(request.headers)
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    status: int | None = carried.status if carried is not None else None
    text = carried.text if carried is not None else ""
    attempt = carried.attempts if carried is not None else 0
    while True:
        attempt += 1
        retry_after: float | None = None
        probe = False
        try:
            sent = False
            while not sent:
                probe = await breaker.permit() if breaker is not None else False
                async with request_slot(resources):
                    # The breaker may have opened while this waited for its slot: wait again.
                    if breaker is not None and not probe and breaker.state != "closed":
                        continue
                    sent = True
                    async with session.request(request.method, request.url, data=data, headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
                        status = answer.status
                        raw = await answer.read()
                        answer_headers = answer.headers
        except aiohttp.InvalidURL as e:
            if breaker is not None:
                breaker.release(probe)
            raise CallFailed(f"{request.method} {request.url}: not a valid URL ({e})", None, "", attempt) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status, text = None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            outcome = "retry"
        except BaseException as e:
            if breaker is not None:
                breaker.release(probe)
            if isinstance(e, PauseTask) and carried is not None:  # this attempt did not go out
                carried.attempts, carried.status, carried.text = attempt - 1, status, text
            raise
        else:
            text = raw.decode("utf-8", "replace")
            outcome = policy.classify(status)
            retry_after = parse_retry_after(answer_headers.get("Retry-After"))
        if breaker is not None:
            # A 4xx other than 408/429 is the request's fault, not the endpoint's.
            if outcome == "success" or (status is not None and status < 500 and status not in (408, 429)):
                breaker.success(probe)
            else:
                breaker.failure(probe)
        if outcome == "success":
            return Response(status, _body(raw, text), {h.lower(): answer_headers[h] for h in keep_headers
                                                       if h in answer_headers})
        what = f"HTTP {status}" if status is not None else text
        if outcome == "fail":
            raise CallFailed(f"{request.method} {request.url} answered {what}, which fails the event "
                             f"(retried statuses: {_words(policy.retry)}; success: {_words(policy.success)})",
                             status, text, attempt)
        if attempt >= policy.attempts:
            raise CallFailed(f"{request.method} {request.url} failed after {attempt} attempt(s); the last: {what}",
                             status, text, attempt)
        await asyncio.sleep(policy.delay(attempt, retry_after))


def _body(raw: bytes, text: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return text


def _words(patterns: tuple[int | str, ...]) -> str:
    return ", ".join(str(p) for p in patterns) or "none"
