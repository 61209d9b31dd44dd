"""What the features of one service's server share (each feature module's ``add_routes(ctx)``
registers its routes on ``ctx.app``): the service's read-only view, its ``http:`` spec, and,
once the server started, its URL and the client that forwards requests to other instances."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from edm_runner.language.model import HttpSpec
from edm_runner.runtime.view import ServiceView
from edm_runner.serve.hop import HopClient


@dataclass
class ServeContext:
    view: ServiceView
    spec: HttpSpec
    app: web.Application
    url: str | None = None
    client: HopClient | None = None
