"""``GET /openapi.json``: an OpenAPI 3.1 document of what this service answers, built from its
``http:`` section when the server starts: the served stores (by name), each ingestion path with
its stream's JSON Schema as the request body, health, readiness and metrics, and the bearer
tokens each scope requires. Always open (``serve.auth``): it says how to ask, never what is stored.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import json_response

_ERROR = {"type": "object", "required": ["error", "message"],
          "properties": {"error": {"type": "string", "description": "A code: not_found, unknown_store, bad_key, "
                                                                     "not_active, restoring, unknown_owner, ..."},
                         "message": {"type": "string"}}}
_RETRY = {"Retry-After": {"description": "Seconds to wait before asking again.", "schema": {"type": "integer"}}}


def add_routes(ctx: ServeContext) -> None:
    body = document(ctx)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(body)

    ctx.app.router.add_get("/openapi.json", openapi)


def _error(description: str, retry: bool = False) -> dict:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry:
        response["headers"] = _RETRY
    return response


def _ok(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {}}}}


def document(ctx: ServeContext) -> dict:
    spec, view = ctx.spec, ctx.view
    secured = {scope: [{"bearer": []}] for scope in spec.auth}
    paths: dict[str, dict] = {
        "/healthz": {"get": {"summary": "The process and its event loop are alive.",
                             "responses": {"200": _ok("Alive.")}}},
        "/readyz": {"get": {"summary": "The first assignment is restored and processing.",
                            "responses": {"200": _ok("Ready."), "503": _error("Not ready yet.", True)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format).",
                             "responses": {"200": {"description": "Prometheus text exposition.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}},
                             **({"security": secured["metrics"]} if "metrics" in secured else {})}},
    }
    if spec.serve:
        paths.update(_query_paths(ctx, secured.get("queries")))
    for endpoint in spec.ingest:
        stream = view.topology.streams[endpoint.stream]
        schema = json.loads(stream.value.schema.read_text(encoding="utf-8")) if stream.value.schema else {}
        operation: dict[str, Any] = {
            "summary": f"Write events to stream {endpoint.stream!r}: one as JSON, a batch as NDJSON.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": schema},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One event per line."}}}},
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string"},
                            "description": "A retried request with the same key writes once."}],
            "responses": {"200": _ok("Written and acknowledged by the broker: partition and offset."),
                          "207": _ok("A batch of which some events were written: a result per event."),
                          "400": _error("Malformed body."),
                          "413": _error("Body too large, or an event above the record size limit."),
                          "415": _error("Unsupported media type."), "422": _error("Schema violation."),
                          "429": _error("Back-pressure.", True), "503": _error("Broker unavailable.", True)}}
        if "ingest" in secured:
            operation["security"] = secured["ingest"]
        paths[endpoint.path] = {"post": operation}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"edm service {view.name}", "version": "1",
                 "description": view.topology.description or f"The HTTP side of service {view.name}."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _query_paths(ctx: ServeContext, security: list | None) -> dict[str, dict]:
    stores = {"name": "store", "in": "path", "required": True, "schema": {"enum": list(ctx.spec.serve)}}
    key = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "The key in the store's key format (GET /stores lists them): as is for string keys, "
                          "JSON for json keys, base64url for bytes."}
    flags = [{"name": name, "in": "query", "required": False, "schema": {"type": "boolean"},
              "description": text + " Also 1/0, yes/no; the name alone means true."}
             for name, text in (("stale", "Accept a standby's or a restoring copy's data (lag in X-Edm-Lag)."),
                                ("redirect", "Answer 307 to the owner instead of forwarding."))]
    times = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"},
              "description": "Window and session stores: epoch milliseconds or ISO 8601."} for name in ("from", "to")]
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
    scan = [{"name": "prefix", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "from", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "to", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "The `next` cursor of the previous page."}, limit]
    unavailable = _error("A rebalance or a restore moves the partition: not_active, restoring, unknown_owner, "
                         "owner_unreachable.", True)
    paths: dict[str, dict] = {"/stores": {"get": {"summary": "The served stores, their types and key formats.",
                                                  "responses": {"200": _ok("The stores.")}}}}
    for prefix, where in (("", "from the instance that holds the key"), ("/local", "from this instance only")):
        get: dict[str, Any] = {
            "summary": f"A key's value (a window store's windows, a session store's sessions), {where}.",
            "parameters": [stores, key, *(flags[:1] if prefix else flags), *times, limit],
            "responses": {"200": _ok("The value."), "400": _error("The key does not parse in the key format."),
                          "404": _error("No such key, or no such served store."),
                          **({"421": _error("Held by another instance (owner, owner_url).")} if prefix else {}),
                          "503": unavailable}}
        listing: dict[str, Any] = {
            "summary": f"A page of a key_value store or table in stored order, {where}.",
            "parameters": [stores, *scan, flags[0], {"name": "partition", "in": "query", "required": False,
                                                     "schema": {"type": "integer", "minimum": 0},
                                                     "description": "Only this partition."}],
            "responses": {"200": _ok("entries and the next cursor."),
                          "400": _error("A parameter it does not take, or a value it cannot use (bad_request, "
                                        "with parameter, value, accepted)."),
                          "404": _error("No such served store."), "503": unavailable}}
        if security:
            get["security"] = listing["security"] = security
        paths[prefix + "/stores/{store}/keys/{key}"] = {"get": get}
        paths[prefix + "/stores/{store}/keys"] = {"get": listing}
    return paths
