"""Typed JSON errors: every refusal is ``{"error": CODE, "message": TEXT, ...}`` with its status.

Codes and statuses (docs/design/http.md):
- 400 ``bad_key``, ``bad_request``, ``malformed`` (an ingested body that is not JSON);
  401 ``unauthorized``, ``invalid_token``, 403 ``forbidden`` (serve.auth); 404 ``not_found``
  (a key), ``unknown_store``, ``unknown_path``; 405 ``method_not_allowed``; 413
  ``body_too_large``; 415 ``unsupported_media_type``; 421 ``not_local`` (a /local query for a
  partition held elsewhere); 422 ``schema_violation``, ``bad_key`` (an ingested event, with
  ``violations``), ``idempotency_key_reused``; 429 ``overloaded`` with ``Retry-After``
  (ingestion back-pressure);
- 503 with ``Retry-After``: ``not_active`` (the owner is not serving the partition yet: a rebalance
  is moving it), ``restoring`` (its store is being restored here), ``unknown_owner`` (no
  assignment names an owner with a URL), ``owner_unreachable`` (the owner did not answer),
  ``timeout`` (the request took longer than ``http.limits.request_timeout``), ``not_ready``
  (``/readyz``), ``broker_unavailable`` (an ingested event was not written);
- 500 ``internal`` only for a bug (logged with its traceback).
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

RETRY_AFTER_S = 1


class HttpError(Exception):
    """Raised by a handler; the error middleware answers it as its JSON body."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 headers: dict[str, str] | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.headers = dict(headers or {})  # e.g. WWW-Authenticate of a 401
        self.fields = fields

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return json_response({"error": self.code, "message": self.message, **self.fields},
                             status=self.status, headers=headers)


def unavailable(code: str, message: str, **fields: Any) -> HttpError:
    """A 503 the caller should retry (``Retry-After``)."""
    return HttpError(503, code, message, retry_after=RETRY_AFTER_S, **fields)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=status,
                        content_type="application/json", headers=headers)
