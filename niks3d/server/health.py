"""``/health`` (the process answers) and ``/ready`` (PostgreSQL and the bucket answer), for load balancers."""

from __future__ import annotations

__all__ = ["health", "ready"]

import asyncio

from aiohttp import web

from niks3d.db.pool import ping
from niks3d.errors import StorageError
from niks3d.server.keys import bucket_key, pool_key

_TIMEOUT = 3.0


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _s3_ok(request: web.Request) -> bool:
    try:
        await asyncio.wait_for(request.app[bucket_key].check(), _TIMEOUT)
    except (StorageError, TimeoutError, OSError):
        return False
    return True


async def ready(request: web.Request) -> web.Response:
    db_ok, s3_ok = await asyncio.gather(ping(request.app[pool_key], _TIMEOUT), _s3_ok(request))
    checks = {"database": "ok" if db_ok else "unreachable", "s3": "ok" if s3_ok else "unreachable"}
    ok = db_ok and s3_ok
    return web.json_response(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )
