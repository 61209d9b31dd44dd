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
from typing import Any

from aiohttp import web

from edm_runner.errors import EdmError
from edm_runner.records.partitioner import default_partition
from edm_runner.runtime.view import LocalStore, ServedStore
from edm_runner.serde import make_serde
from edm_runner.serve import params
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError, json_response, unavailable
from edm_runner.serve.routing import HOP_HEADER, INSTANCE_HEADER, Remote, forward, redirect, route
from edm_runner.state.api import encode_json
from edm_runner.state.query import Row

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_LIMIT = params.integer(1, MAX_LIMIT)
# Where a query may be answered (docs/design/http.md, "Routing"): every query takes ``stale``; a
# key's GET that may be forwarded also ``redirect`` (a scan merges pages: no single owner).
_STALE = {"stale": params.flag()}
_ROUTED = {**_STALE, "redirect": params.flag()}
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
            given = self._key_params(store, request, local_only)
            where = self._route(request, store, partition, local_only, given)
            if isinstance(where, Remote):
                if given.get("redirect"):
                    return redirect(where, request)
                try:
                    status, headers, body = await forward(self.ctx, where, request)
                except HttpError as error:
                    if error.code != "owner_unreachable" or not given.get("stale"):
                        raise
                    status, headers, body = await self._from_standbys(request, store, partition, error)
                return web.Response(status=status, headers=headers, body=body)
            lag = None
            if where.role in ("standby", "restoring"):
                lag = await self._lag(where)
                where = self._route(request, store, partition, local_only, given)  # again: the lookup awaited
                if isinstance(where, Remote):
                    raise unavailable("not_active", f"partition {partition} of {store.name!r} moved while it "
                                                    "was read", partition=partition)
            body = self._read_key(store, where, key, given)
            if body is None:
                return _not_found(store, key, self._headers(where, lag))
            return json_response(body, headers=self._headers(where, lag))
        return handler

    async def _from_standbys(self, request: web.Request, store: ServedStore, partition: int,
                             error: HttpError) -> tuple[int, list[tuple[str, str]], bytes]:
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

    def _key_params(self, store: ServedStore, request: web.Request, local_only: bool) -> dict[str, Any]:
        """The parameters of a key's GET: a window or session store's also take a time range."""
        accepted = dict(_STALE if local_only else _ROUTED)
        if store.kind != "key_value":
            accepted.update({"from": params.time_ms(), "to": params.time_ms(), "limit": _LIMIT})
        given = params.parse(request.query, accepted)
        _check_range(request, given, "a time at or before to={to}",
                     "from={start!r} is after to={to!r}: the range is empty; give from at or before to")
        return given

    def _read_key(self, store: ServedStore, local: LocalStore, key: Any, given: dict[str, Any]) -> dict | None:
        if store.kind == "key_value":
            value = local.query.get(key)
            return None if value is None else {"store": store.name, "key": key, "value": value}
        limit = given.get("limit", DEFAULT_LIMIT)
        start, end = given.get("from"), given.get("to")
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
            given = self._scan_params(store, request)
            bounds = self._bounds(store, given)
            limit = given.get("limit", DEFAULT_LIMIT)
            if store.subtopology is None:
                partitions = [0]
            elif "partition" in given:
                partitions = [given["partition"]]
            else:
                partitions = list(range(store.partitions))
            pages = await asyncio.gather(*(self._scan_partition(request, store, p, bounds, limit, local_only, given)
                                           for p in partitions))
            merged = list(heapq.merge(*pages, key=lambda row: row.key_bytes))
            more = len(merged) > limit or any(len(page) >= limit for page in pages)
            rows = merged[:limit]
            cursor = _cursor(rows[-1].key_bytes) if rows and more else None
            return json_response({"store": store.name, "entries": [{"key": r.key, "value": r.value} for r in rows],
                                  "next": cursor}, headers={INSTANCE_HEADER: self.ctx.view.instance_id})
        return handler

    async def _scan_partition(self, request: web.Request, store: ServedStore, partition: int,
                              bounds: dict[str, bytes | None], limit: int, local_only: bool,
                              given: dict[str, Any]) -> list[Row]:
        where = self._route(request, store, partition, local_only, given)
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

    def _scan_params(self, store: ServedStore, request: web.Request) -> dict[str, Any]:
        """The parameters of a scan: key bounds in the store's key format, a cursor, a page size."""
        def key_bound(name: str) -> params.Param:
            return params.Param(lambda text: encode_json(self._parse_key(store, text, name)))

        accepted = {**_STALE, "prefix": params.text(), "from": key_bound("from"), "to": key_bound("to"),
                    "after": params.cursor(_check_cursor), "limit": _LIMIT,
                    "partition": params.integer(0, store.partitions - 1)}
        given = params.parse(request.query, accepted)
        if "prefix" in given and store.key.format not in ("string", "json"):
            raise params.refuse("prefix", request.query["prefix"], "no prefix: the keys are not strings",
                                f"prefix scans apply to string keys; the keys of {store.name!r} are in format "
                                f"{store.key.format}")
        _check_range(request, given, "a key that sorts at or before to={to}",
                     "from={start!r} sorts after to={to!r} (keys sort by the bytes of their JSON): the range is "
                     "empty; give from at or before to")
        return given

    @staticmethod
    def _bounds(store: ServedStore, given: dict[str, Any]) -> dict[str, bytes | None]:
        prefix = given.get("prefix")
        return {"lo": given.get("from"), "hi": given.get("to"), "after": given.get("after"),
                # the JSON of every string starting with it
                "prefix": encode_json(prefix)[:-1] if prefix is not None else None}

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

    def _route(self, request: web.Request, store: ServedStore, partition: int, local_only: bool,
               given: dict[str, Any]) -> LocalStore | Remote:
        return route(self.ctx, store, partition, local_only=local_only, stale=bool(given.get("stale")),
                     hopped=HOP_HEADER in request.headers)

    async def _lag(self, local: LocalStore) -> int | None:
        if local.behind is not None:  # being restored: what its restore has yet to apply
            return local.behind
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


def _check_range(request: web.Request, given: dict[str, Any], accepted: str, message: str) -> None:
    """400 when both ``from`` and ``to`` are given and ``from`` comes after ``to``."""
    if "from" in given and "to" in given and given["from"] > given["to"]:
        start, to = request.query["from"], request.query["to"]
        raise params.refuse("from", start, accepted.format(to=to), message.format(start=start, to=to))


def _check_cursor(raw: bytes) -> None:
    """A cursor holds the JSON of a stored key (ValueError otherwise)."""
    json.loads(raw.decode())


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
