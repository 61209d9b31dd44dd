"""What the features of one service's server share (each feature module's ``add_routes(ctx)``
registers its routes on ``ctx.app``): the service's read-only view, its ``http:`` spec, and,
once the server started, its URL and the client session used to reach other instances."""
from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from edm_runner.language.model import HttpSpec
from edm_runner.runtime.view import ServiceView


@dataclass
class ServeContext:
    view: ServiceView
    spec: HttpSpec
    app: web.Application
    url: str | None = None
    client: aiohttp.ClientSession | None = None
