"""``/healthz``: the process and its event loop are alive. It never looks at the broker, the
assignment or the stores, so an orchestrator restarts only a process that cannot answer."""
from __future__ import annotations

from aiohttp import web

from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import json_response


def add_routes(ctx: ServeContext) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "service": ctx.view.name, "instance": ctx.view.instance_id})

    ctx.app.router.add_get("/healthz", healthz)
