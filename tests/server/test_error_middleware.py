"""The error middleware's table, exercised with handlers that raise each kind of error: 4xx bodies say what was
wrong, 503/429 carry Retry-After, and a 500 never shows the exception's text or a traceback."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from niks3d.errors import (
    ApiError,
    DatabaseError,
    Forbidden,
    InvalidRequest,
    MissingPrerequisite,
    NotFound,
    StateConflict,
    StorageError,
    StorageThrottled,
    Unauthenticated,
)
from niks3d.nix.errors import InvalidStorePath
from niks3d.server.errors import error_middleware

SECRET_DETAIL = "/var/lib/secret/path.py line 42 password=hunter2"


def _raiser(exc: BaseException):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (StateConflict("session x is aborted", code="session_closed"), 409, "session_closed", None),
        (StateConflict("busy", code="objects_pending", retry_after=2), 409, "objects_pending", "2"),
        (InvalidRequest("paths[0]: bad"), 400, "invalid_request", None),
        (NotFound("no pin named 'x'", code="pin_not_found"), 404, "pin_not_found", None),
        (MissingPrerequisite("2 objects missing", code="objects_missing"), 422, "objects_missing", None),
        (Unauthenticated("the token is not known"), 401, "unauthorized", None),
        (Forbidden("token 'r' lacks the scope"), 403, "forbidden", None),
        (ApiError(415, "unsupported_media_type", "send JSON"), 415, "unsupported_media_type", None),
        (InvalidStorePath("store path 'x': is not inside /nix/store"), 400, "invalid_request", None),
        (StorageThrottled(SECRET_DETAIL, retry_after=7.5), 429, "throttled", "7"),
        (StorageError(SECRET_DETAIL), 503, "unavailable", "5"),
        (DatabaseError(SECRET_DETAIL), 503, "unavailable", "5"),
        (RuntimeError(SECRET_DETAIL), 500, "internal_error", None),
        (KeyError(SECRET_DETAIL), 500, "internal_error", None),
    ],
)
async def test_errors_map_to_statuses_without_leaking_details(exc, status, code, retry_after) -> None:  # type: ignore[no-untyped-def]
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/api/x", _raiser(exc))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/api/x")
        body = await response.json()
        assert response.status == status
        assert body["error"] == code
        assert response.headers.get("Retry-After") == retry_after
        if status >= 429:
            assert "hunter2" not in await response.text() and "Traceback" not in await response.text()
        else:
            assert body["message"] == str(exc)
