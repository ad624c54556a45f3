"""Reading JSON request bodies: the media type, the size limit, the time limit and the syntax, each refused
with its own 4xx.

Numbers are bounded before they are converted: an integer of more than :data:`MAX_INT_DIGITS` digits (no field
of the API needs more than a 64-bit integer) and the non-JSON constants ``Infinity``, ``-Infinity`` and ``NaN``
are a 400, so that no conversion later can fail on them (docs/api.md).
"""

from __future__ import annotations

__all__ = ["MAX_INT_DIGITS", "parse_json", "read_body", "read_json", "session_id_of"]

import asyncio
import json
import math
import uuid

from aiohttp import web

from niks3d.errors import ApiError, InvalidRequest, NotFound, Unsupported
from niks3d.heap import built
from niks3d.server.keys import config_key

# The most digits a JSON integer may have: 2**63 has 19.
MAX_INT_DIGITS = 20


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    built()  # what the scanner built so far leaves the garbage collector's walks, every so many (niks3d/heap.py)
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {len(text.lstrip('-'))} digits is out of range (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} is out of range")
    return value


def _parse_constant(name: str) -> object:
    raise _BadNumber(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> object:
    """``json.loads`` with bounded numbers; InvalidRequest ``invalid_json`` for anything else than bounded JSON."""
    try:
        return json.loads(raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _BadNumber as exc:
        raise InvalidRequest(f"the body is not usable JSON: {exc}", code="invalid_json") from None
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json") from None


async def read_json(request: web.Request, *, allow_empty: bool = False) -> object:
    """The parsed JSON body; 415 for another media type, 413 past the limit, 400 for bad JSON."""
    if not request.body_exists:
        if allow_empty:
            return None
        raise InvalidRequest("the request needs a JSON body", code="invalid_json")
    raw = await read_body(request)
    if not raw.strip() and allow_empty:
        return None
    return parse_json(raw)


async def read_body(request: web.Request) -> bytes:
    """The raw bytes of a JSON body, for a caller that parses it itself (off the event loop when it is large);
    415 for another media type, 413 past the limit, 408 past ``server.body_timeout``."""
    if not request.body_exists:
        raise InvalidRequest("the request needs a JSON body", code="invalid_json")
    if request.content_type != "application/json":
        raise Unsupported(f"send Content-Type: application/json, not {request.content_type!r}")
    limit = request.app[config_key].settings.server.body_timeout
    try:
        # Bounded in size by the application's client_max_size (413 past it), and in time by server.body_timeout.
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {limit:g} s") from None
    return raw


def session_id_of(request: web.Request) -> uuid.UUID:
    raw = request.match_info["session_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("the session id is not a UUID", code="session_not_found") from None
