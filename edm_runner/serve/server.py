"""The life cycle of one service's HTTP server.

Invariants:
- The server is bound before the service joins its group (``attach`` is entered before
  ``ServiceRunner.start``), so the advertised URL, with the port actually bound, rides in the
  member metadata of the first join; it answers ``/healthz`` from then until the service closed.
- It stops after the service closed (``run_services`` exits ``attach`` last), within
  ``SHUTDOWN_S``: requests still in flight then are cancelled.
- Every error a handler raises is a JSON body (``serve.errors``); an unexpected exception is a
  500 ``internal``, logged with its traceback. A request that runs past
  ``http.limits.request_timeout`` is a 503 ``timeout`` with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from edm_runner.errors import EdmError
from edm_runner.language.http import TLS_FILES, TLS_HINT, WILDCARD_HOSTS, tls_file_problem
from edm_runner.language.model import HttpSpec
from edm_runner.runtime.view import ServiceView
from edm_runner.serve import auth, health, ingest, metrics, openapi, queries, ready
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError, unavailable
from edm_runner.serve.hop import HopClient

log = logging.getLogger("edm.serve")

SHUTDOWN_S = 2.0
# The features that add routes, in order (each module's ``add_routes(side)``).
# metrics first: its middleware counts the requests auth refuses.
FEATURES = (health, ready, metrics, auth, ingest, queries, openapi)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpSide:
    """One service's server: the aiohttp application, its runner and the hop client used
    to proxy requests to other instances (in ``ctx``, shared with the features)."""

    def __init__(self, view: ServiceView) -> None:
        spec = view.http
        if spec is None:
            raise ValueError(f"service {view.name!r} declares no http section")
        self.view = view
        self.spec: HttpSpec = spec
        app = web.Application(client_max_size=spec.max_body_bytes, middlewares=[self._errors])
        self.ctx = ServeContext(view, spec, app)
        self._runner: web.AppRunner | None = None
        for feature in FEATURES:
            feature.add_routes(self.ctx)

    @property
    def url(self) -> str | None:
        return self.ctx.url

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.spec.request_timeout_ms / 1000):
                return await handler(request)
        except HttpError as error:
            return error.response()
        except web.HTTPRequestEntityTooLarge:
            return HttpError(413, "body_too_large", f"the request body is larger than http.limits.max_body "
                                                    f"({self.spec.max_body_bytes} bytes)").response()
        except web.HTTPNotFound:
            return HttpError(404, "unknown_path", f"no endpoint at {request.path}").response()
        except web.HTTPMethodNotAllowed as error:
            return HttpError(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}",
                             allowed=sorted(error.allowed_methods)).response()
        except web.HTTPException:
            raise
        except TimeoutError:
            return unavailable("timeout", f"the request took longer than http.limits.request_timeout "
                                          f"({self.spec.request_timeout_ms} ms)").response()
        except Exception:
            log.exception("%s: %s %s failed", self.view.name, request.method, request.path_qs)
            return HttpError(500, "internal", "internal error; it is logged, please report it").response()

    async def start(self) -> None:
        spec = self.spec
        tls = _tls_context(spec)
        runner = web.AppRunner(self.ctx.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, spec.host, spec.port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise EdmError(f"{spec.pos}: service {self.view.name!r} cannot listen on {spec.host}:{spec.port}: "
                           f"{e.strerror or e}; choose another port in `http.listen` (0: any free port), "
                           "or stop what uses it") from None
        port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        self.ctx.url = spec.advertised_url or f"{scheme}://{_url_host(spec.host)}:{port}"
        self.view.advertise(self.ctx.url)
        self.ctx.client = HopClient(_peer_tls_context(spec))
        log.info("%s: serving HTTP on %s (listening on %s:%d)", self.view.name, self.ctx.url, spec.host, port)

    async def stop(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            if self.ctx.client is not None:
                await self.ctx.client.close()


@asynccontextmanager
async def attach(view: ServiceView) -> AsyncIterator[HttpSide | None]:
    """The server of ``view``'s service while the service runs (None without ``http:``)."""
    if view.http is None:
        yield None
        return
    side = HttpSide(view)
    await side.start()
    try:
        yield side
    finally:
        await side.stop()


def _url_host(host: str) -> str:
    """How other instances reach a listen host: a wildcard is this machine's name."""
    if host in WILDCARD_HOSTS:
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def _tls_context(spec: HttpSpec) -> ssl.SSLContext | None:
    if spec.tls_cert is None or spec.tls_key is None:
        return None
    for (name, what), path, pos in zip(TLS_FILES.items(), (spec.tls_cert, spec.tls_key),
                                       (spec.tls_cert_pos, spec.tls_key_pos)):
        if problem := tls_file_problem(path):  # a templated path is first checked here, once rendered
            raise EdmError(f"{pos}: TLS {what} file http.tls.{name} {problem}; {TLS_HINT}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(spec.tls_cert, spec.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise EdmError(f"{spec.tls_cert_pos}: cannot load the TLS certificate {spec.tls_cert} with the key "
                       f"{spec.tls_key}: {e.strerror or getattr(e, 'reason', None) or e}; give a PEM "
                       "certificate and the PEM private key that matches it") from None
    return context


def _peer_tls_context(spec: HttpSpec) -> ssl.SSLContext | None:
    """How this instance verifies the other instances it forwards requests to, when it serves
    HTTPS itself: the system's CAs, and its own certificate as one more trust anchor (the
    instances of a service share their certificate, often self-signed or from a private CA).
    Host names are verified as usual, against the advertised URLs."""
    if spec.tls_cert is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(spec.tls_cert))  # loaded already by _tls_context
    return context
