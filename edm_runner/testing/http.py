"""Mocked external APIs: a stand-in for the aiohttp session of the ``call`` steps a mock names
(``operators.calls.step.CallScope.mocks``). Everything but the network stays real: the step's
request building, resources, retries, breaker and cache."""
from __future__ import annotations

import json
from typing import Any, Callable

import aiohttp


class MockSession:
    """Answers every request with ``answer(request)``: the response body (status 200, JSON
    unless a string). What ``answer`` raises is a transport failure (``aiohttp.ClientConnectionError``
    with its message): the step retries it, then the event fails (``on_error``)."""

    closed = False

    def __init__(self, answer: Callable[[dict[str, Any]], Any]) -> None:
        self.answer = answer

    def request(self, method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: Any = None) -> _Answer:
        body = None if data is None else json.loads(data)
        return _Answer(self.answer, {"method": method, "url": url, "body": body, "headers": dict(headers or {})})

    async def close(self) -> None:
        """Nothing to close."""


class _Answer:
    def __init__(self, answer: Callable[[dict[str, Any]], Any], request: dict[str, Any]) -> None:
        self._answer = answer
        self._request = request
        self.status = 200
        self.headers: dict[str, str] = {}
        self._raw = b""

    async def __aenter__(self) -> _Answer:
        try:
            body = self._answer(self._request)
        except Exception as error:  # the mock's `raises:` (or a python mock that raised)
            raise aiohttp.ClientConnectionError(str(error)) from error
        self._raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.headers = {"Content-Type": "text/plain" if isinstance(body, str) else "application/json"}
        return self

    async def __aexit__(self, *exc: object) -> bool:
        return False

    async def read(self) -> bytes:
        return self._raw
