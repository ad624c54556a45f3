"""Reading JSON request bodies: the media type, the size limit and the syntax, each refused with its own 4xx."""

from __future__ import annotations

__all__ = ["read_json", "session_id_of"]

import json
import uuid

from aiohttp import web

from niks3d.errors import ApiError


async def read_json(request: web.Request, *, allow_empty: bool = False) -> object:
    """The parsed JSON body; 415 for another media type, 413 past the limit, 400 for bad JSON."""
    if not request.body_exists:
        if allow_empty:
            return None
        raise ApiError(400, "invalid_json", "the request needs a JSON body")
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send Content-Type: application/json, not {request.content_type!r}",
        )
    raw = await request.read()  # bounded by the application's client_max_size (413 past it)
    if not raw.strip() and allow_empty:
        return None
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None


def session_id_of(request: web.Request) -> uuid.UUID:
    raw = request.match_info["session_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "session_not_found", "the session id is not a UUID") from None
