"""Garbage collection over the API (docs/api.md): start a run, follow it, list runs, delete a store path.

Thin handlers: they parse and authorize, and call :mod:`niks3d.gc`. A run started here belongs to this daemon's
:class:`~niks3d.gc.background.BackgroundCollector` (the :func:`gc_context` cleanup context), which cancels it
when the daemon stops; its progress lives in the database, so any replica answers ``GET`` for it.
"""

from __future__ import annotations

__all__ = ["delete_path", "gc_context", "get_run", "list_runs", "start_run"]

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from niks3d.config import parse_duration
from niks3d.db import paths as db_paths
from niks3d.db.gc import runs
from niks3d.errors import InvalidRequest, NotFound
from niks3d.gc import GcContext, GcParams
from niks3d.gc import delete_path as delete_store_path
from niks3d.gc.background import BackgroundCollector
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath, validate_hash_part
from niks3d.server.auth import require
from niks3d.server.body import read_json
from niks3d.server.keys import bucket_key, collector_key, config_key, pool_key

_MAX_LIST = 100
_FIELDS = ("older_than", "grace_period", "force", "dry_run")


async def gc_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the background collector; on shutdown its run is cancelled and recorded as interrupted."""
    settings = app[config_key].settings
    # No notifier: the daemon's STATUS= belongs to `serve` (cli/serve.py). A run started here reports its progress
    # in gc_runs and the log; a second Notifier would replace "serving on ..." with "gc run N finished".
    ctx = GcContext(pool=app[pool_key], bucket=app[bucket_key], settings=settings.gc, notifier=None)
    collector = BackgroundCollector(ctx)
    app[collector_key] = collector
    yield
    await collector.close()


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidRequest(f"{where}: must be true or false, got {type(value).__name__}")


def _params(body: object, request: web.Request) -> GcParams:
    gc = request.app[config_key].settings.gc
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object such as {"dry_run": true}')
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}")
    durations = {}
    for name in ("older_than", "grace_period"):
        if body.get(name) is not None:
            try:
                durations[name] = parse_duration(body[name])
            except ValueError as exc:
                raise InvalidRequest(f"{name}: {exc}") from None
    return GcParams(
        older_than=durations.get("older_than", gc.older_than),
        grace_period=durations.get("grace_period", gc.grace_period),
        force=_flag(body.get("force", False), "force"),
        dry_run=_flag(body.get("dry_run", False), "dry_run"),
        batch_size=gc.batch_size,
    )


async def start_run(request: web.Request) -> web.Response:
    """``POST /api/v1/gc``: 202 with the new run's id, or 409 ``gc_running`` naming the active run."""
    require(request, "gc")
    params = _params(await read_json(request, allow_empty=True), request)
    row = await request.app[collector_key].start(params)
    return web.json_response(
        {"run_id": row.id, "state": row.state, "started_at": row.started_at.isoformat(), "params": row.params},
        status=202,
        headers={"Location": f"/api/v1/gc/{row.id}"},
    )


async def get_run(request: web.Request) -> web.Response:
    """``GET /api/v1/gc/{run_id}``: the run's record, progress included."""
    require(request, "gc", "read")
    raw = request.match_info["run_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound(f"no gc run {raw[:40]!r}: run ids are numbers", code="run_not_found")
    async with request.app[pool_key].acquire() as conn:
        row = await runs.get_run(conn, int(raw))
    if row is None:
        raise NotFound(f"no gc run {raw}", code="run_not_found")
    return web.json_response(row.to_json())


async def list_runs(request: web.Request) -> web.Response:
    """``GET /api/v1/gc?limit=N``: the latest runs, newest first."""
    require(request, "gc", "read")
    raw = request.query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= _MAX_LIST:
        raise InvalidRequest(f"limit: must be a number from 1 to {_MAX_LIST}")
    async with request.app[pool_key].acquire() as conn:
        rows = await runs.list_runs(conn, int(raw))
    return web.json_response({"runs": [r.to_json() for r in rows]})


def _query_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "0").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise InvalidRequest(f"{name}: must be 1 or 0, got {value[:20]!r}")


def _hash_of(raw: str) -> tuple[str, str | None]:
    """The hash part and (if given) the name of a store path, basename or bare hash part."""
    text = unquote(raw)
    if text.startswith("nix/store/"):
        text = "/" + text
    try:
        if text.startswith("/"):
            path = StorePath.parse(text)
            return path.hash, path.name
        if "-" in text:
            path = StorePath.from_basename(text)
            return path.hash, path.name
        return validate_hash_part(text), None
    except NixFormatError as exc:
        raise InvalidRequest(f"path: {exc}") from None


async def delete_path(request: web.Request) -> web.Response:
    """``DELETE /api/v1/paths/{path}[?closure=1][&force=1]``: delete a store path (and what only it keeps)."""
    identity = require(request, "gc")
    hash_part, name = _hash_of(request.match_info["path"])
    closure, force = _query_flag(request, "closure"), _query_flag(request, "force")
    unknown = sorted(set(request.query) - {"closure", "force"})
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) {', '.join(map(repr, unknown))}")
    app = request.app
    async with app[pool_key].acquire() as conn:
        known = await db_paths.path_name(conn, hash_part)
    if known is None or (name is not None and known != name):
        raise NotFound(f"{request.match_info['path'][:200]} is not in the cache", code="path_not_found")
    ctx = app[collector_key].ctx
    answer = await delete_store_path(
        ctx,
        hash_part,
        closure=closure,
        force=force,
        older_than=app[config_key].settings.gc.older_than,
        requested_by=identity.name,
    )
    return web.json_response(answer)
