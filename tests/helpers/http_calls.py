"""Plain HTTP(S) calls for the request-response tests: any method, a body, headers, a TLS
context; the status, the headers and the body (decoded JSON when it is JSON) whatever the status."""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


def call(url: str, *, method: str = "GET", body: bytes | str | None = None, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None, timeout_s: float = 30) -> tuple[int, dict[str, str], Any]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, dict(error.headers), error.read()
    if head.get("Content-Type", "").startswith("application/json") and raw:
        return status, head, json.loads(raw)
    return status, head, raw.decode(errors="replace")


def post_json(url: str, value: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return call(url, method="POST", body=json.dumps(value), headers=headers, **kwargs)


def post_ndjson(url: str, lines: list[str], **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/x-ndjson", **kwargs.pop("headers", {})}
    return call(url, method="POST", body="\n".join(lines) + "\n", headers=headers, **kwargs)
