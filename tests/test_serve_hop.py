"""serve/hop.py against a real aiohttp server: what a forwarded request carries."""
from __future__ import annotations

import asyncio

from aiohttp import web

from edm_runner.serve.hop import HopClient


def test_a_forwarded_header_keeps_the_clients_bytes_also_beyond_latin_1() -> None:
    """aiohttp hands the forwarding instance headers decoded as UTF-8 (surrogateescape for bytes
    that are not): the hop sends the client's bytes again, never a 500 for a '€'."""
    async def scenario() -> tuple[int, bytes, bytes]:
        seen: list[bytes] = []

        async def echo(request: web.Request) -> web.Response:
            seen.append(request.raw_headers[[k for k, _ in request.raw_headers].index(b"X-Note")][1])
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        client = HopClient()
        try:
            sent = "€ é".encode() + b" \xff"
            note = sent.decode("utf-8", "surrogateescape")  # as aiohttp gives it to the forwarder
            answer = await client.request("GET", f"http://127.0.0.1:{port}", "/echo", [("X-Note", note)], None)
            return answer.status, seen[0], sent
        finally:
            await client.close()
            await runner.cleanup()

    status, received, sent = asyncio.run(scenario())
    assert status == 200 and received == sent
