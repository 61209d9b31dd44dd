"""The outcome of a ``call`` step's call for one event, as the memory of completed calls keeps
it (``state.calls.CallMemory``, docs/design/calls.md "Replays").

An outcome is a success (the ``Response``) or a final failure (``CallFailed``: what the event
took to ``on_error``), stored with the digest of the request it answered.

Invariant: a remembered outcome is used only for the same request (``digest``: method, URL,
body and headers, the idempotency key among them); an event whose request changed since (the
topology was edited between the crash and the restart) calls again.
"""
from __future__ import annotations

import hashlib
import json

from edm_runner.operators.calls.client import CallFailed, Request, Response


def digest(request: Request) -> str:
    canonical = json.dumps([request.method, request.url, request.body, request.headers], sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode(request_digest: str, outcome: Response | CallFailed) -> bytes:
    if isinstance(outcome, Response):
        doc = {"d": request_digest, "ok": outcome.as_value()}
    else:
        doc = {"d": request_digest, "failed": [str(outcome), outcome.status, outcome.body, outcome.attempts]}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes, request_digest: str) -> Response | CallFailed | None:
    """The outcome remembered in ``raw`` for the request of ``request_digest``; None when it
    answered another request (or is unreadable: the call is made again)."""
    try:
        doc = json.loads(raw)
        if doc.get("d") != request_digest:
            return None
        if "ok" in doc:
            ok = doc["ok"]
            return Response(ok["status"], ok["body"], ok["headers"])
        message, status, body, attempts = doc["failed"]
        return CallFailed(message, status, body, attempts)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
