"""State queries: ``GET`` a key, scan a store, fetch a key's windows or sessions, as JSON.

Endpoints (docs/design/http.md has them with examples):
- ``GET /stores`` -- the served stores: type, partitions, key format;
- ``GET /stores/NAME/keys/KEY`` -- a key_value store's or table's value of KEY (404
  ``not_found``); a window store's windows of KEY, a session store's sessions of KEY, with
  ``?from=T&to=T`` (window starts; for sessions: sessions ending at or after ``from`` and
  starting at or before ``to``; epoch milliseconds or ISO 8601) and ``?limit=N``;
- ``GET /stores/NAME/keys?prefix=P&from=K&to=K&limit=N&after=CURSOR`` -- a page of a key_value
  store or table in stored order (the bytes of each key's JSON): string keys starting with P,
  keys from K (inclusive) to K (exclusive), after the cursor ``next`` of the previous page;
- ``/local/stores/...`` -- the same, answered only from this instance's own state, never
  forwarded (a scan there takes ``?partition=N`` to read one partition).

A KEY is given in the key format of what feeds the store (``ServedStore.key``): as it is for
``string``, as JSON for ``json`` (a string key quoted), base64url for ``bytes``. Its partition is
the producers' (murmur2 of the key's bytes in that format), and ``serve.routing`` decides where
it is read. ``?stale=true`` accepts a standby's or a restoring copy's data; every answer read
from a store says where from (``X-Edm-Instance``, ``X-Edm-Source``, and ``X-Edm-Lag``: the
changelog records the copy is behind, when known).

Invariants: every read is bounded (``MAX_LIMIT`` rows per partition) and synchronous between
``view.local`` and its last row (see ``runtime.view``); a scan's pages are complete and
disjoint (each partition is read past the cursor, the union is cut at ``limit`` in stored order).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from edm_runner.errors import EdmError
from edm_runner.records.partitioner import default_partition
from edm_runner.runtime.view import LocalStore, ServedStore
from edm_runner.serde import make_serde
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError, json_response, unavailable
from edm_runner.serve.routing import HOP_HEADER, INSTANCE_HEADER, Remote, forward, redirect, route
from edm_runner.state.api import encode_json
from edm_runner.state.query import Row

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SOURCE_HEADER = "X-Edm-Source"
LAG_HEADER = "X-Edm-Lag"


def add_routes(ctx: ServeContext) -> None:
    queries = _Queries(ctx)
    router = ctx.app.router
    router.add_get("/stores", queries.list_stores)
    for prefix, local in (("", False), ("/local", True)):
        router.add_get(prefix + "/stores/{store}/keys", queries.scan_handler(local))
        router.add_get(prefix + "/stores/{store}/keys/{key:.+}", queries.key_handler(local))


class _Queries:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx
        self.served = list(ctx.spec.serve)
        self.serdes = {}
        for name in self.served:
            store = ctx.view.store(name)
            if store is None:
                raise EdmError(f"{ctx.spec.pos}: http.serve names {name!r}, which no step of service "
                               f"{ctx.view.name!r} uses; serve a store a step or a function uses, or a table")
            self.serdes[name] = make_serde(store.key)

    async def list_stores(self, request: web.Request) -> web.Response:
        stores = []
        for name in self.served:
            store = self.ctx.view.store(name)
            assert store is not None
            stores.append({"name": name, "type": store.kind, "global": store.subtopology is None,
                           "partitions": store.partitions, "key_format": store.key.format})
        return json_response({"service": self.ctx.view.name, "stores": stores})

    # -- one key --------------------------------------------------------------------------

    def key_handler(self, local_only: bool):
        async def handler(request: web.Request) -> web.StreamResponse:
            store = self._store(request)
            key, partition = self._key(store, request.match_info["key"])
            params = _Params(request)
            where = self._route(request, store, partition, local_only)
            if isinstance(where, Remote):
                if params.flag("redirect"):
                    return redirect(where, request)
                try:
                    status, headers, body = await forward(self.ctx, where, request)
                except HttpError as error:
                    if error.code != "owner_unreachable" or not params.flag("stale"):
                        raise
                    status, headers, body = await self._from_standbys(request, store, partition, error)
                return web.Response(status=status, headers=headers, body=body)
            lag = None
            if where.role in ("standby", "restoring"):
                lag = await self._lag(where)
                where = self._route(request, store, partition, local_only)  # again: the lookup awaited
                if isinstance(where, Remote):
                    raise unavailable("not_active", f"partition {partition} of {store.name!r} moved while it "
                                                    "was read", partition=partition)
            body = self._read_key(store, where, key, params)
            if body is None:
                return _not_found(store, key, self._headers(where, lag))
            return json_response(body, headers=self._headers(where, lag))
        return handler

    async def _from_standbys(self, request: web.Request, store: ServedStore, partition: int,
                             error: HttpError) -> tuple[int, dict[str, str], bytes]:
        """A stale read whose owner did not answer: the first standby of the partition that does."""
        routing = self.ctx.view.routing()
        if routing is None or store.subtopology is None:
            raise error
        for instance in routing.standbys.get((store.subtopology, partition), ()):
            url = routing.hosts.get(instance)
            if instance == routing.instance_id or url is None:
                continue
            try:
                return await forward(self.ctx, Remote(instance, url), request)
            except HttpError:
                continue
        raise error

    def _read_key(self, store: ServedStore, local: LocalStore, key: Any, params: _Params) -> dict | None:
        limit = params.limit()
        if store.kind == "key_value":
            value = local.query.get(key)
            return None if value is None else {"store": store.name, "key": key, "value": value}
        start, end = params.time("from"), params.time("to")
        if store.kind == "window":
            rows = local.query.windows(key, start, end, limit)
            size = store.window_size_ms
            return {"store": store.name, "key": key,
                    "windows": [{"start": r.start, "end": r.start + size if size else None, "value": r.value}
                                for r in rows if r.start is not None]}
        rows = local.query.sessions(key, start, end, limit)
        return {"store": store.name, "key": key,
                "sessions": [{"start": r.start, "end": r.end, "value": r.value} for r in rows]}

    # -- scans ----------------------------------------------------------------------------

    def scan_handler(self, local_only: bool):
        async def handler(request: web.Request) -> web.StreamResponse:
            store = self._store(request)
            if store.kind != "key_value":
                raise HttpError(400, "bad_request", f"{store.name!r} is a {store.kind} store: scans list key_value "
                                                    f"stores and tables; fetch one key's {store.kind}s with "
                                                    f"/stores/{store.name}/keys/KEY?from=T&to=T")
            params = _Params(request)
            bounds = self._bounds(store, params)
            limit = params.limit()
            if store.subtopology is None:
                partitions = [0]
            elif "partition" in request.query:
                partitions = [params.integer("partition", 0, store.partitions - 1)]
            else:
                partitions = list(range(store.partitions))
            pages = await asyncio.gather(*(self._scan_partition(request, store, p, bounds, limit, local_only)
                                           for p in partitions))
            merged = list(heapq.merge(*pages, key=lambda row: row.key_bytes))
            more = len(merged) > limit or any(len(page) >= limit for page in pages)
            rows = merged[:limit]
            cursor = _cursor(rows[-1].key_bytes) if rows and more else None
            return json_response({"store": store.name, "entries": [{"key": r.key, "value": r.value} for r in rows],
                                  "next": cursor}, headers={INSTANCE_HEADER: self.ctx.view.instance_id})
        return handler

    async def _scan_partition(self, request: web.Request, store: ServedStore, partition: int,
                              bounds: dict[str, bytes | None], limit: int, local_only: bool) -> list[Row]:
        where = self._route(request, store, partition, local_only)
        if isinstance(where, LocalStore):
            return where.query.scan(lo=bounds["lo"] or b"", hi=bounds["hi"], prefix=bounds["prefix"] or b"",
                                    after=bounds["after"], limit=limit)
        query = dict(request.query)
        query.update(partition=str(partition), limit=str(limit))
        path = f"/local/stores/{store.name}/keys?" + "&".join(
            f"{k}={_quote(v)}" for k, v in query.items())
        status, _, body = await forward(self.ctx, where, request, path)
        document = _json(body)
        if status != 200:
            error = document if isinstance(document, dict) else {}
            message = str(error.get("message", f"instance {where.instance!r} answered {status}"))
            if status in (421, 503):  # the owner no longer holds it, or not yet: a rebalance moves it
                code = str(error.get("error")) if status == 503 else "not_active"
                raise unavailable(code, message, partition=partition)
            raise HttpError(status, str(error.get("error", "owner_error")), message, partition=partition)
        return [Row(encode_json(entry["key"]), entry["key"], entry["value"]) for entry in document["entries"]]

    def _bounds(self, store: ServedStore, params: _Params) -> dict[str, bytes | None]:
        bounds: dict[str, bytes | None] = {"lo": None, "hi": None, "prefix": None, "after": None}
        prefix = params.text("prefix")
        if prefix is not None:
            if store.key.format not in ("string", "json"):
                raise HttpError(400, "bad_request", f"prefix scans apply to string keys; the keys of {store.name!r} "
                                                    f"are in format {store.key.format}")
            bounds["prefix"] = encode_json(prefix)[:-1]  # the JSON of every string starting with it
        for name, bound in (("from", "lo"), ("to", "hi")):
            text = params.text(name)
            if text is not None:
                bounds[bound] = encode_json(self._parse_key(store, text, name))
        after = params.text("after")
        if after is not None:
            try:
                bounds["after"] = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4))
            except (binascii.Error, ValueError):
                raise HttpError(400, "bad_request", "after= takes the `next` cursor of the previous page") from None
        return bounds

    # -- shared -----------------------------------------------------------------------------

    def _store(self, request: web.Request) -> ServedStore:
        name = request.match_info["store"]
        store = self.ctx.view.store(name) if name in self.serdes else None
        if store is None:
            raise HttpError(404, "unknown_store", f"no served store {name!r}",
                            served=self.served)
        return store

    def _parse_key(self, store: ServedStore, text: str, what: str = "key") -> Any:
        fmt = store.key.format
        if fmt == "string":
            return text
        if fmt == "json":
            try:
                return json.loads(text)
            except ValueError:
                raise HttpError(400, "bad_key", f"{what} {text!r} is not JSON: the keys of {store.name!r} are in "
                                                f"format json (a string key is quoted: \"{text}\")") from None
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise HttpError(400, "bad_key", f"{what} {text!r} is not base64url: the keys of {store.name!r} are "
                                            "in format bytes") from None

    def _key(self, store: ServedStore, text: str) -> tuple[Any, int]:
        """The key and its partition; a key that does not encode in the store's key format
        (or cannot be a stored key) is a 400 ``bad_key``."""
        key = self._parse_key(store, text)
        try:
            encoded = self.serdes[store.name].encode(key)
            encode_json(key)
        except EdmError as e:
            raise HttpError(400, "bad_key", f"key {text!r} does not fit the key format of {store.name!r}: {e}") \
                from None
        if store.subtopology is None or encoded is None:
            return key, 0
        return key, default_partition(encoded, store.partitions)

    def _route(self, request: web.Request, store: ServedStore, partition: int, local_only: bool) -> LocalStore | Remote:
        return route(self.ctx, store, partition, local_only=local_only, stale=_Params(request).flag("stale"),
                     hopped=HOP_HEADER in request.headers)

    async def _lag(self, local: LocalStore) -> int | None:
        if local.role not in ("standby", "restoring") or local.changelog is None:
            return None
        end = await self.ctx.view.changelog_end(local.changelog)
        return None if end is None else max(0, end - (local.checkpointed or 0))

    def _headers(self, local: LocalStore, lag: int | None) -> dict[str, str]:
        headers = {INSTANCE_HEADER: self.ctx.view.instance_id, SOURCE_HEADER: local.role}
        if lag is not None:
            headers[LAG_HEADER] = str(lag)
        return headers


def _not_found(store: ServedStore, key: Any, headers: dict[str, str]) -> web.Response:
    response = HttpError(404, "not_found", f"no key {json.dumps(key, ensure_ascii=False)} in {store.name!r}",
                         store=store.name, key=key).response()
    response.headers.update(headers)
    return response


class _Params:
    """The query parameters of a request, parsed with 400 ``bad_request`` for a bad one."""

    def __init__(self, request: web.Request) -> None:
        self.query = request.query

    def text(self, name: str) -> str | None:
        return self.query.get(name)

    def flag(self, name: str) -> bool:
        return self.query.get(name, "false").lower() in ("true", "1", "yes", "")

    def integer(self, name: str, low: int, high: int) -> int:
        text = self.query.get(name, "")
        if not text.isdigit() or not low <= int(text) <= high:
            raise HttpError(400, "bad_request", f"{name}={text!r}: use an integer from {low} to {high}")
        return int(text)

    def limit(self) -> int:
        return self.integer("limit", 1, MAX_LIMIT) if "limit" in self.query else DEFAULT_LIMIT

    def time(self, name: str) -> int | None:
        text = self.query.get(name)
        if text is None:
            return None
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise HttpError(400, "bad_request", f"{name}={text!r}: use epoch milliseconds or an ISO 8601 time "
                                                "(2026-11-30T10:00:00Z)") from None
        if moment.tzinfo is None:
            raise HttpError(400, "bad_request", f"{name}={text!r} has no time zone: add Z or +01:00")
        return int(moment.timestamp() * 1000)


def _cursor(key_bytes: bytes) -> str:
    return base64.urlsafe_b64encode(key_bytes).decode().rstrip("=")


def _quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
