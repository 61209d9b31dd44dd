"""``/readyz``: whether this instance should receive traffic.

Ready means the service received its first assignment, restored every task of it (and
bootstrapped its global tables) and is processing; it stays ready until it stops. Decision
(docs/design/http.md, "Readiness"): a later rebalance does not make it unready, even while the
tasks it gains restore. Why: readiness takes a pod out of the load balancer for every request,
while during an ordinary rebalance the instance still answers everything it holds (and proxies
the rest), and the few keys of a task being restored are answered with a precise 503
``restoring`` and ``Retry-After`` by the query itself. An instance going unready at every
rebalance would flap all instances out of the load balancer at once, since a rebalance
involves every member. So: 503 ``not_ready`` while starting (no assignment yet, or its first
restore running), 200 while running, 503 ``not_ready`` again once stopping.

``/healthz`` (serve.health) is the other probe: alive, whatever the broker does.
"""
from __future__ import annotations

from aiohttp import web

from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import json_response, unavailable

WHY = {"starting": "the service has not restored its first assignment yet",
       "stopping": "the service is stopping", "stopped": "the service stopped"}


def add_routes(ctx: ServeContext) -> None:
    view = ctx.view

    async def readyz(request: web.Request) -> web.Response:
        phase = view.phase
        tasks = view.task_counts()
        if phase != "running":
            restoring = {f"{store} {task}": {"done": r.done, "total": r.total}
                         for (store, task), r in view.stats.restores.items() if r.finished is None}
            raise unavailable("not_ready", f"{view.name}: {WHY.get(phase, phase)}", phase=phase, tasks=tasks,
                              restoring=restoring)
        return json_response({"status": "ready", "service": view.name, "instance": view.instance_id,
                              "phase": phase, "rebalancing": view.rebalancing, "tasks": tasks})

    ctx.app.router.add_get("/readyz", readyz)
