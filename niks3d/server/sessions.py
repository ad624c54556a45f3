"""Handlers of the push protocol (docs/api.md): thin, they parse, authorize and call :mod:`niks3d.uploads`."""

from __future__ import annotations

__all__ = ["abort", "complete", "create", "report", "status", "urls"]

from datetime import UTC, datetime

from aiohttp import web

from niks3d import uploads
from niks3d.errors import ApiError
from niks3d.server.auth import require
from niks3d.server.body import read_json, session_id_of
from niks3d.server.keys import push_key
from niks3d.uploads.lifecycle import get_session
from niks3d.uploads.publish import closed_error
from niks3d.uploads.request import parse_object_reports, parse_session_request, parse_url_request


async def create(request: web.Request) -> web.Response:
    token = require(request, "push")
    req = parse_session_request(await read_json(request))
    answer, created = await uploads.open_session(request.app[push_key], req, token.name)
    return web.json_response(answer, status=201 if created else 200)


async def _open_session(request: web.Request):  # type: ignore[no-untyped-def]
    ctx = request.app[push_key]
    session = await get_session(ctx, session_id_of(request))
    if session.state != "open" or session.is_expired(datetime.now(UTC)):
        raise closed_error(session)
    return ctx, session


async def urls(request: web.Request) -> web.Response:
    require(request, "push")
    wanted = parse_url_request(await read_json(request))
    ctx, session = await _open_session(request)
    return web.json_response(await uploads.refresh_urls(ctx, session, wanted))


async def report(request: web.Request) -> web.Response:
    require(request, "push")
    reports = parse_object_reports(await read_json(request), optional=False)
    ctx, session = await _open_session(request)
    accepted, missing = await uploads.report_objects(ctx, session, reports)
    return web.json_response({"accepted": accepted, "missing": missing})


async def complete(request: web.Request) -> web.Response:
    require(request, "push")
    reports = parse_object_reports(await read_json(request, allow_empty=True), optional=True)
    result = await uploads.complete_session(request.app[push_key], session_id_of(request), reports)
    return web.json_response(result)


async def status(request: web.Request) -> web.Response:
    require(request, "push", "read")
    session = await get_session(request.app[push_key], session_id_of(request))
    return web.json_response(uploads.session_status(session))


async def abort(request: web.Request) -> web.Response:
    require(request, "push")
    if request.body_exists:
        raise ApiError(400, "invalid_request", "DELETE takes no body")
    return web.json_response(await uploads.abort_session(request.app[push_key], session_id_of(request)))
