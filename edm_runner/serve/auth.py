"""Who may ask: bearer tokens per scope (``http.auth``), checked before any handler runs.

Scopes: ``queries`` (``/stores/...``, ``/local/...`` and the instance-to-instance paths under
``/_edm``), ``ingest`` (the ``http.ingest`` paths), ``metrics`` (``/metrics``). A scope without
an ``auth`` entry is open; ``/healthz``, ``/readyz`` and ``/openapi.json`` are always open (an
orchestrator probes them without credentials).

Invariants:
- Tokens come from a file (one per line; blank lines and ``#`` comments ignored) or an
  environment variable (separated by commas or whitespace), read once when the server starts;
  never from the topology itself. An empty source refuses to start (it would lock everyone out).
- A request of a protected scope without ``Authorization: Bearer <token>`` is a 401
  ``unauthorized`` (with ``WWW-Authenticate``); a token that no scope accepts is a 401
  ``invalid_token``; a token of another scope only is a 403 ``forbidden``. Each refusal is
  counted (``edm_http_refused_requests_total{scope, status}``).
- Tokens are compared in constant time (``hmac.compare_digest``).
- The hop from one instance to the owner of a key keeps the client's ``Authorization`` header
  (the proxy forwards the request's headers), so the owner checks the same token: an instance
  never vouches for a request it proxies.
"""
from __future__ import annotations

import hmac
import os
import re
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from edm_runner.errors import EdmError
from edm_runner.language.http import AUTH_SCOPES
from edm_runner.language.model import HttpSpec, TokenSource
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError
from edm_runner.serve.metrics import process_metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY_PREFIXES = ("/stores", "/local", "/_edm")


def read_tokens(source: TokenSource, scope: str, where: object) -> frozenset[bytes]:
    """The tokens of ``source``; ``EdmError`` naming the file or variable when there are none."""
    if source.file is not None:
        try:
            text = Path(source.file).read_text()
        except OSError as e:
            raise EdmError(f"{where}: cannot read the {scope} tokens file {source.file}: {e.strerror or e}; "
                           "http.auth names a file relative to the topology file") from None
        tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        origin = f"file {source.file}"
    else:
        tokens = [t for t in re.split(r"[\s,]+", os.environ.get(source.env or "", "")) if t]
        origin = f"environment variable {source.env}"
    if not tokens:
        raise EdmError(f"{where}: the {scope} tokens ({origin}) are empty, which would refuse every "
                       f"{scope} request; put at least one token there, or remove http.auth.{scope}")
    return frozenset(t.encode() for t in tokens)


def scope_of(path: str, ingest_paths: frozenset[str]) -> str | None:
    """The auth scope of a request path (None: always open)."""
    if path == "/metrics":
        return "metrics"
    if path in ingest_paths:
        return "ingest"
    if any(path == p or path.startswith(p + "/") for p in QUERY_PREFIXES):
        return "queries"
    return None


class Tokens:
    """The accepted tokens of each protected scope of one service."""

    def __init__(self, spec: HttpSpec) -> None:
        self.by_scope = {scope: read_tokens(source, scope, spec.pos) for scope, source in spec.auth.items()
                         if scope in AUTH_SCOPES}
        self.ingest_paths = frozenset(e.path for e in spec.ingest)

    def check(self, scope: str, authorization: str | None) -> HttpError | None:
        """None when ``authorization`` may ask in ``scope``, else the refusal."""
        accepted = self.by_scope.get(scope)
        if accepted is None:
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return HttpError(401, "unauthorized", f"{scope} requests need the header "
                                                  "'Authorization: Bearer <token>'")
        given = token.encode()
        if _known(given, accepted):
            return None
        if any(_known(given, other) for s, other in self.by_scope.items() if s != scope):
            return HttpError(403, "forbidden", f"the token is not accepted for {scope} requests")
        return HttpError(401, "invalid_token", "the token is not accepted")


def _known(token: bytes, accepted: frozenset[bytes]) -> bool:
    found = False
    for candidate in accepted:  # every candidate compared: the time does not tell which matched
        found |= hmac.compare_digest(token, candidate)
    return found


def add_routes(ctx: ServeContext) -> None:
    """The authentication middleware, when ``http.auth`` protects a scope."""
    if not ctx.spec.auth:
        return
    tokens = Tokens(ctx.spec)
    service = ctx.view.name
    refused = process_metrics().http.refused

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = scope_of(request.path, tokens.ingest_paths)
        if scope is not None:
            error = tokens.check(scope, request.headers.get("Authorization"))
            if error is not None:
                refused.labels(service, scope, str(error.status)).inc()
                if error.status == 401:
                    error.headers = {"WWW-Authenticate": f'Bearer realm="edm", scope="{scope}"'}
                raise error
        return await handler(request)

    ctx.app.middlewares.append(authenticate)
