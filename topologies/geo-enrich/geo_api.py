"""A stand-in for a third-party geolocation API, for the geo-enrich example.

    python topologies/geo-enrich/geo_api.py [PORT] [LATENCY_MS]

GET /geo/{ip} answers {"ip", "country"}; every second it prints how many calls it got in the
previous one, so you can watch the resource's rate limit hold.
"""
from __future__ import annotations

import asyncio
import sys
import zlib

from aiohttp import web

COUNTRIES = ["BE", "FR", "NL", "DE", "LU", "CH"]


async def main(port: int, latency: float) -> None:
    calls = 0

    async def geo(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(latency)
        ip = request.match_info["ip"]
        return web.json_response({"ip": ip, "country": COUNTRIES[zlib.crc32(ip.encode()) % len(COUNTRIES)]})

    app = web.Application()
    app.router.add_get("/geo/{ip}", geo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"geo API on http://127.0.0.1:{port}/geo/<ip>", flush=True)
    while True:
        await asyncio.sleep(1)
        if calls:
            print(f"{calls} calls in the last second", flush=True)
        calls = 0


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8099,
                     int(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.02))
