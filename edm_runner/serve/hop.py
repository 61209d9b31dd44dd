"""The proxy hop's HTTP client: requests forwarded to the other instances of the service over
kept-alive HTTP/1.1 connections, pooled per instance URL, the answers parsed by httptools (the C
parser uvicorn uses).

Why not aiohttp's client (which edm used first): a forwarded lookup is a small GET whose answer
is passed back as it is, and aiohttp's client spends about 190 us of CPU per request on this
machine (request and response objects, cookie jar, tracing, timeouts) against about 60 us here;
on two cores shared by three processes that difference is most of what a hop cost beyond 2x a
local lookup (docs/design/http.md, "Bench serve-get").

Invariants:
- A connection carries one request at a time; it goes back to its pool only after a complete
  answer that lets it be kept alive, and is closed on anything else (an error, a timeout, a
  cancellation, ``Connection: close``), so a pooled connection never holds a stray answer.
- A request that fails on a reused connection before any byte of the answer arrived (the other
  end closed it while it was idle) is sent once more on a new connection; every request edm
  forwards is safe to repeat (lookups, and ingestion with an ``Idempotency-Key``).
- At most ``MAX_IDLE`` idle connections per URL are kept; ``close`` closes them all.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

MAX_IDLE = 64


class HopError(ConnectionError):
    """The other instance did not answer (refused, reset, closed, malformed answer)."""


@dataclass
class Answer:
    """The other instance's answer: its status, headers (as sent) and body (de-chunked)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; ``send`` one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = Answer()
        self.done: asyncio.Future[Answer] | None = None
        self.received = False  # a byte of the current answer arrived
        self.closed = False
        self.head = False  # the current request is a HEAD: its answer has no body, whatever it says

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():  # nothing asked: not an answer to keep in sync with
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HopError(f"malformed answer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HopError(f"connection closed{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.answer.body += body

    def on_headers_complete(self) -> None:
        if self.head:  # the parser cannot know a HEAD's answer has no body: done, and not reused
            self._complete()
            self.close()

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.close()
        self._complete()

    def _complete(self) -> None:
        self.answer.status = self.parser.get_status_code()
        if self.done is not None and not self.done.done():
            self.done.set_result(self.answer)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None and (self.done is None or self.done.done())
        self.answer, self.received, self.head = Answer(), False, request.startswith(b"HEAD ")
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done

    def _fail(self, error: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HopClient:
    """Connections to the other instances, pooled per base URL (``http://host:port``)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self._idle: dict[str, list[_Connection]] = {}

    async def request(self, method: str, base_url: str, path_qs: str, headers: list[tuple[str, str]],
                      body: bytes | None) -> Answer:
        """``method path_qs`` at ``base_url`` with ``headers`` (no Host, Content-Length or
        hop-by-hop header) and ``body``; raises ``HopError`` or ``OSError``. The caller bounds
        the time (a cancelled request closes its connection)."""
        parts = urlsplit(base_url)
        head = [f"{method} {parts.path.rstrip('/')}{path_qs} HTTP/1.1\r\nHost: {parts.netloc}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method not in ("GET", "HEAD"):
            head.append(f"Content-Length: {len(body or b'')}\r\n")
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives the client's bytes back
        data = "".join(head).encode("utf-8", "surrogateescape") + b"\r\n" + (body or b"")
        idle = self._idle.setdefault(base_url, [])
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, data, idle)
            except HopError:
                if connection.received:
                    raise
                # closed by the other end while idle: once more, on a new connection
            break
        connection = await self._connect(parts)
        return await self._exchange(connection, data, idle)

    async def _exchange(self, connection: _Connection, data: bytes, idle: list[_Connection]) -> Answer:
        try:
            answer = await connection.send(data)
        except BaseException:
            connection.close()
            raise
        if not connection.closed and len(idle) < MAX_IDLE:
            idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self, parts) -> _Connection:
        loop = asyncio.get_running_loop()
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        _, connection = await loop.create_connection(
            _Connection, parts.hostname, port, ssl=(self.ssl_context or True) if https else None,
            server_hostname=parts.hostname if https else None)
        return connection

    async def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
