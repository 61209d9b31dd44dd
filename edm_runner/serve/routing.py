"""Where a query for one partition of a store is answered: here, or at the instance that owns it.

The rule (``route``), one place for every query (docs/design/http.md):
- a global table answers here (every instance holds all of it);
- the partition's task active here answers here; restoring here, it answers only a caller that
  accepts stale data (else 503 ``restoring``); assigned here but not open yet, 503 ``not_active``;
- a caller that accepts stale data is answered here by a standby (or a restoring copy) of it;
- ``/local`` queries stop there: 421 ``not_local``, naming the owner;
- otherwise the request goes to the owner's URL (proxied, or a 307 for ``?redirect=true``);
  no assignment yet, no owner, or an owner without a URL: 503 ``unknown_owner``. A request that
  already hopped once (``HOP_HEADER``) is never forwarded again: the two instances disagree on
  the owner, which a rebalance in progress settles, so it is a 503 ``not_active``.

An ingestion request carrying an ``Idempotency-Key`` is answered by the key's holder
(``key_holder``): of the members of the last assignment that serve HTTP, the one with the
highest hash of (member, endpoint, key) (rendezvous hashing: every instance computes the same
holder from the same members, and a member joining or leaving moves only the keys it gains or
held). So a retry reaches the instance that remembers the first answer, whichever instance the
load balancer chose. Before the first assignment: 503 ``unknown_owner``; a request already
forwarded once is answered where it arrived.

A proxied request keeps its method, path, query, body and headers (``Authorization``
included) but the hop-by-hop ones; the owner's status, body and headers come back as they are.
The owner not answering within the request timeout is a 503 ``owner_unreachable``.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from aiohttp import web

from edm_runner.runtime.view import LocalStore, ServedStore
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError, unavailable
from edm_runner.serve.hop import HopError
from edm_runner.serve.metrics import process_metrics

HOP_HEADER = "X-Edm-Hop"
INSTANCE_HEADER = "X-Edm-Instance"
# Hop-by-hop headers (RFC 9110 7.6.1) and those the hop client sets itself.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                            "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
# Of the time a request may take, what a proxied request leaves for the answer to travel back.
_PROXY_MARGIN_S = 0.25


@dataclass(frozen=True)
class Remote:
    """The partition is answered at ``url`` (the base URL of instance ``instance``)."""

    instance: str
    url: str


def route(ctx: ServeContext, store: ServedStore, partition: int, *, local_only: bool, stale: bool,
          hopped: bool) -> LocalStore | Remote:
    """Where ``partition`` of ``store`` is read (see the module rule); raises ``HttpError``."""
    view = ctx.view
    if store.subtopology is None:
        local = view.local(store.name, 0)
        if local is None:
            raise unavailable("restoring", f"global table {store.name!r} is still loading here")
        return local
    routing = view.routing()
    if routing is None:
        raise unavailable("unknown_owner", f"this instance has not received its assignment yet; partition "
                                           f"{partition} of {store.name!r} has no known owner")
    task = (store.subtopology, partition)
    owner = routing.owners.get(task)
    local = view.local(store.name, partition)
    if local is not None and (local.role == "active" or stale):
        return local
    if owner == routing.instance_id:
        if local is not None and local.role == "restoring":
            raise unavailable("restoring", f"partition {partition} of {store.name!r} is being restored here; "
                                           "add ?stale=true to read it as restored so far", partition=partition)
        raise unavailable("not_active", f"partition {partition} of {store.name!r} is assigned here and not "
                                        "serving yet (a rebalance is in progress)", partition=partition)
    url = routing.hosts.get(owner) if owner is not None else None
    if local_only:
        raise HttpError(421, "not_local", f"partition {partition} of {store.name!r} is not held here",
                        partition=partition, owner=owner, owner_url=url)
    if owner is None:
        raise unavailable("unknown_owner", f"no instance runs partition {partition} of {store.name!r} "
                                           "(a rebalance is in progress)", partition=partition)
    if url is None:
        raise unavailable("unknown_owner", f"instance {owner!r}, which runs partition {partition} of "
                                           f"{store.name!r}, serves no HTTP", partition=partition, owner=owner)
    if hopped:
        raise unavailable("not_active", f"partition {partition} of {store.name!r} was forwarded here, but this "
                                        f"instance sees {owner!r} as its owner (a rebalance is in progress)",
                          partition=partition, owner=owner)
    return Remote(owner, url)


def key_holder(ctx: ServeContext, scope: str, key: str, *, hopped: bool) -> Remote | None:
    """The instance that remembers the answers of ``key`` on endpoint ``scope`` (None: this
    one); see the module rule. Raises 503 ``unknown_owner`` before the first assignment."""
    if hopped:
        return None
    routing = ctx.view.routing()
    if routing is None:
        raise unavailable("unknown_owner", "this instance has not received its assignment yet, so it does not "
                                           "know which instance remembers Idempotency-Key "
                                           f"{key!r}; retry in a moment")
    members = [(instance, url) for instance, url in routing.hosts.items() if url is not None]
    if not members:
        return None

    def weight(member: tuple[str, str]) -> tuple[bytes, str]:
        return hashlib.sha256(f"{member[0]}\0{scope}\0{key}".encode()).digest(), member[0]

    instance, url = max(members, key=weight)
    return None if instance == routing.instance_id else Remote(instance, url)


def redirect(remote: Remote, request: web.Request) -> web.Response:
    """A 307 to the same request at the owner."""
    return web.Response(status=307, headers={"Location": remote.url + request.path_qs,
                                             INSTANCE_HEADER: remote.instance})


async def forward(ctx: ServeContext, remote: Remote, request: web.Request,
                  path_qs: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """The owner's answer to ``request`` (or to ``path_qs`` on it): status, headers, body (its
    bytes as the owner sent them). Raises 503 ``owner_unreachable`` when the owner does not
    answer in time."""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
    headers.append((HOP_HEADER, "1"))
    resource = request.match_info.route.resource
    proxied = process_metrics().http.proxied
    endpoint = resource.canonical if resource is not None else request.path
    body = await request.read() if request.body_exists else None  # read already by ingestion
    timeout = max(0.1, ctx.spec.request_timeout_ms / 1000 - _PROXY_MARGIN_S)
    assert ctx.client is not None, "the hop client opens when the server starts"
    try:
        async with asyncio.timeout(timeout):
            answer = await ctx.client.request(request.method, remote.url, path_qs or request.path_qs, headers, body)
    except (HopError, OSError, TimeoutError) as e:
        proxied.labels(ctx.view.name, endpoint, "unreachable").inc()
        raise unavailable("owner_unreachable", f"instance {remote.instance!r} at {remote.url} did not answer "
                                               f"({type(e).__name__}: {e or 'timed out'})",
                          owner=remote.instance) from None
    proxied.labels(ctx.view.name, endpoint, str(answer.status)).inc()
    return answer.status, [(k, v) for k, v in answer.headers if k.lower() not in _NOT_FORWARDED], bytes(answer.body)
