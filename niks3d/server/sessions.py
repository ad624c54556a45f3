"""Handlers of the push protocol (docs/api.md): thin, they parse, authorize and call :mod:`niks3d.uploads`.

A session belongs to the identity that opened it: only that identity may read, extend, report to, complete
or abort it; an admin may also abort (and read) any session (docs/security.md, rule 4). Another identity is
refused with 403 before anything about the session is done.
"""

from __future__ import annotations

__all__ = ["abort", "complete", "create", "page", "report", "status", "urls"]

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from niks3d import uploads
from niks3d.db.uploads import SessionRow
from niks3d.errors import Forbidden, InvalidRequest
from niks3d.server.auth import Identity, require
from niks3d.server.body import parse_json, read_body, read_json, session_id_of
from niks3d.server.keys import push_key
from niks3d.uploads.lifecycle import get_session
from niks3d.uploads.publish import closed_error
from niks3d.uploads.request import PreparedSession, parse_object_reports, parse_url_request


def _owner(identity: Identity) -> str:
    """The owner recorded for a session this identity opens (upload_sessions.token_name)."""
    return identity.name


async def _owned(request: web.Request, identity: Identity, *, admin_may: bool = False) -> SessionRow:
    """The session named in the URL, if ``identity`` may use it; 404 when there is none, 403 when it is another's."""
    session = await get_session(request.app[push_key], session_id_of(request))
    if session.token_name != _owner(identity) and not (admin_may and "admin" in identity.scopes):
        raise Forbidden(
            f"upload session {session.id} was opened by another identity; "
            f"{identity.kind} {identity.name!r} may not use it"
        )
    return session


def _prepare(raw: bytes) -> PreparedSession:
    return PreparedSession.of(parse_json(raw))


async def create(request: web.Request) -> web.Response:
    identity = require(request, "push")
    raw = await read_body(request)
    # Parsing, validating and encoding 100,000 paths is seconds of CPU: in a worker thread, so that the event
    # loop keeps answering everyone else in the meantime (issue 20).
    prepared = await asyncio.to_thread(_prepare, raw)
    answer, created = await uploads.open_session(request.app[push_key], prepared, _owner(identity))
    return web.json_response(answer, status=201 if created else 200)


def _start_of(request: web.Request) -> int:
    raw = request.query.get("start", "0")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidRequest(f"start: {raw[:40]!r} is not the index of a path of this session")
    return int(raw)


async def page(request: web.Request) -> web.Response:
    """``GET /sessions/{id}/paths?start=N``: the page of the session's answer that starts at path N."""
    identity = require(request, "push")
    start = _start_of(request)
    session = await _owned(request, identity)
    if session.state != "completed":  # a session completed when it opened (all cached) still has its pages
        _still_open(session)
    return web.json_response(await uploads.build_response(request.app[push_key], session.id, start))


def _still_open(session: SessionRow) -> SessionRow:
    if session.state != "open" or session.is_expired(datetime.now(UTC)):
        raise closed_error(session)
    return session


async def urls(request: web.Request) -> web.Response:
    identity = require(request, "push")
    session = _still_open(await _owned(request, identity))
    wanted = parse_url_request(await read_json(request))
    return web.json_response(await uploads.refresh_urls(request.app[push_key], session, wanted))


async def report(request: web.Request) -> web.Response:
    identity = require(request, "push")
    session = _still_open(await _owned(request, identity))
    reports = parse_object_reports(await read_json(request), optional=False)
    accepted, missing = await uploads.report_objects(request.app[push_key], session, reports, trusted=identity.trusted)
    # Objects that wait for another session's upload of the same key to be checked are neither accepted nor
    # missing: the client keeps their reports and sends them again (docs/api.md).
    waiting = [m["key"] for m in missing if m["reason"] == uploads.BEING_PLACED]
    missing = [m for m in missing if m["reason"] != uploads.BEING_PLACED]
    return web.json_response({"accepted": accepted, "missing": missing, **({"waiting": waiting} if waiting else {})})


async def complete(request: web.Request) -> web.Response:
    identity = require(request, "push")
    session = await _owned(request, identity)
    reports = parse_object_reports(await read_json(request, allow_empty=True), optional=True)
    result = await uploads.complete_session(request.app[push_key], session, reports, trusted=identity.trusted)
    return web.json_response(result)


async def status(request: web.Request) -> web.Response:
    identity = require(request, "push", "read")
    return web.json_response(uploads.session_status(await _owned(request, identity, admin_may=True)))


async def abort(request: web.Request) -> web.Response:
    identity = require(request, "push")
    if request.body_exists:
        raise InvalidRequest("DELETE takes no body")
    session = await _owned(request, identity, admin_may=True)
    return web.json_response(await uploads.abort_session(request.app[push_key], session.id))
