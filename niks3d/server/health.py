"""``/health`` (the process answers) and ``/ready`` (PostgreSQL and the bucket answer), for load balancers.

``/ready`` answers within :data:`READY_TIMEOUT` seconds whatever the dependencies do: each check runs as a task
of its own, and one that has not finished by then counts as unreachable and is left to finish (its own waits are
bounded, docs/configuration.md) in the background, rather than holding the answer back while it cleans up.
"""

from __future__ import annotations

__all__ = ["READY_TIMEOUT", "health", "ready"]

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from niks3d.db.pool import ping
from niks3d.errors import StorageError
from niks3d.server.keys import bucket_key, pool_key

logger = logging.getLogger(__name__)

READY_TIMEOUT = 1.5
# Checks still finishing after their answer was given, kept referenced until they are done.
_lingering: set[asyncio.Task[bool]] = set()


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _s3_ok(request: web.Request) -> bool:
    try:
        await request.app[bucket_key].check()
    except (StorageError, TimeoutError, OSError) as exc:
        logger.debug("bucket check failed: %s", exc or type(exc).__name__)
        return False
    return True


async def _within(checks: dict[str, Coroutine[Any, Any, bool]], timeout: float) -> dict[str, bool]:  # noqa: ASYNC109
    tasks = {name: asyncio.ensure_future(check) for name, check in checks.items()}
    await asyncio.wait(tasks.values(), timeout=timeout)
    results = {}
    for name, task in tasks.items():
        if task.done():
            results[name] = not task.cancelled() and task.exception() is None and task.result()
        else:
            logger.debug("readiness check %s did not answer within %.1f s", name, timeout)
            results[name] = False
            _lingering.add(task)
            task.add_done_callback(_lingering.discard)
    return results


async def ready(request: web.Request) -> web.Response:
    results = await _within(
        {"database": ping(request.app[pool_key], READY_TIMEOUT), "s3": _s3_ok(request)}, READY_TIMEOUT
    )
    checks = {name: "ok" if ok else "unreachable" for name, ok in results.items()}
    ok = all(results.values())
    return web.json_response(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )
