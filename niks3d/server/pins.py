"""Pins: named GC roots that never expire (``/api/v1/pins``)."""

from __future__ import annotations

__all__ = ["delete_pin", "get_pin", "list_pins", "put_pin"]

import re

import asyncpg
from aiohttp import web

from niks3d.db import paths as db_paths
from niks3d.errors import InvalidRequest, NotFound
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath
from niks3d.server.auth import require
from niks3d.server.body import read_json
from niks3d.server.keys import pool_key

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME_RE.fullmatch(name):
        raise InvalidRequest(f"pin name {name[:140]!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    return name


async def put_pin(request: web.Request) -> web.Response:
    identity = require(request, "pin")
    name = _name(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"path"}:
        raise InvalidRequest('the body must be {"path": "/nix/store/..."}')
    raw = body["path"]
    try:
        path = StorePath.parse(raw) if isinstance(raw, str) and raw.startswith("/") else StorePath.from_basename(raw)
    except NixFormatError as exc:
        raise InvalidRequest(f"path: {exc}") from None
    missing = NotFound(f"{path.path} is not in the cache; push it first", code="path_not_found")
    try:
        async with request.app[pool_key].acquire() as conn, conn.transaction():
            if await db_paths.path_name(conn, path.hash) != path.name:
                raise missing
            pin = await db_paths.upsert_pin(conn, name, path.hash, identity.name)
    except asyncpg.ForeignKeyViolationError:  # GC deleted the path between the check and the insert
        raise missing from None
    return web.json_response(pin.to_json())


async def list_pins(request: web.Request) -> web.Response:
    require(request, "read", "pin")
    async with request.app[pool_key].acquire() as conn:
        pins = await db_paths.list_pins(conn)
    return web.json_response({"pins": [p.to_json() for p in pins]})


async def get_pin(request: web.Request) -> web.Response:
    require(request, "read", "pin")
    name = _name(request)
    async with request.app[pool_key].acquire() as conn:
        pin = await db_paths.get_pin(conn, name)
    if pin is None:
        raise NotFound(f"no pin named {name!r}", code="pin_not_found")
    return web.json_response(pin.to_json())


async def delete_pin(request: web.Request) -> web.Response:
    require(request, "pin")
    name = _name(request)
    async with request.app[pool_key].acquire() as conn:
        deleted = await db_paths.delete_pin(conn, name)
    if not deleted:
        raise NotFound(f"no pin named {name!r}", code="pin_not_found")
    return web.Response(status=204)
