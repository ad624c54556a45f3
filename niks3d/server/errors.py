"""The error middleware: every failure becomes an answer through one explicit table.

4xx answers say what was wrong; a 5xx says only that the server failed, and the detail goes to the log.
No path, exception text or traceback reaches a client for a 5xx (test_error_responses.py proves it).

The table, from :mod:`niks3d.errors` (whose docstring draws the tree) to statuses:

==========================  ======  ==============================================================
error                       status  notes
==========================  ======  ==============================================================
Unauthenticated             401     with ``WWW-Authenticate`` (Bearer on the API, Basic elsewhere)
Forbidden                   403
InvalidRequest, NixFormat   400
NotFound                    404     the code says what (``session_not_found``, ``pin_not_found``)
StateConflict               409     with ``Retry-After`` when ``details`` carry ``retry_after``
MissingPrerequisite         422
InvalidUpload               422     an upload that fails verification; its session is aborted
Unsupported                 415
ApiError                    its own the HTTP layer's own refusals (408, 413, 424)
StorageThrottled            429     ``Retry-After`` from S3's answer (503 outside the API, for Nix)
StorageError, DatabaseError 503     ``Retry-After: 5``
OSError, db.pool.UNAVAILABLE        timeouts and lost connections to PostgreSQL: a warning, no traceback
StorageUnavailable          503     S3 unreachable or not answering in time: a warning, no traceback
the client went away        499     nothing is sent; logged at INFO, counted under status 499 (nginx's use); also
                                    when an outage (StorageUnavailable, db.pool.UNAVAILABLE) meets a gone client
aiohttp HTTPException       its own 400/404/405/413/415 with our wording
anything else               500     "the server failed"
==========================  ======  ==============================================================

The answer's format follows the request's surface (:func:`on_api`): JSON ``{"error", "message", ...}`` for the
API (``/api/``, ``/health``, ``/ready``), plain text (the message and a newline) for what Nix, Prometheus and
browsers read (the binary cache, ``/metrics``, the landing page).
"""

from __future__ import annotations

__all__ = ["error_middleware", "error_response", "json_error", "on_api"]

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from niks3d.db.pool import UNAVAILABLE as DATABASE_UNAVAILABLE
from niks3d.errors import (
    ApiError,
    DatabaseError,
    Forbidden,
    InvalidUpload,
    MissingPrerequisite,
    NotFound,
    RequestError,
    StateConflict,
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    Unauthenticated,
    Unsupported,
)
from niks3d.nix.errors import NixFormatError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP exceptions -> (code, message)
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "the request is malformed"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here"),
    413: ("body_too_large", "the request body is too large"),
    415: ("unsupported_media_type", "send application/json"),
}
# Domain refusals -> status, most specific first (InvalidRequest and the RequestError base are 400).
_REQUEST_STATUS: tuple[tuple[type[RequestError], int], ...] = (
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (StateConflict, 409),
    (MissingPrerequisite, 422),
    (InvalidUpload, 422),
    (Unsupported, 415),
    (RequestError, 400),
)
API_CHALLENGE = 'Bearer realm="niks3d"'
NIX_CHALLENGE = 'Basic realm="niks3d", charset="UTF-8"'
RETRY_AFTER = 5
# The status a request is counted under when its client went away before the answer was sent (nginx's 499).
CLIENT_GONE = 499
# What a backend's failure raises (a 503), and which of it is an outage rather than a refusal.
_BACKEND_FAILURES: tuple[type[BaseException], ...] = (StorageError, DatabaseError, OSError, *DATABASE_UNAVAILABLE)
_OUTAGES: tuple[type[BaseException], ...] = (StorageUnavailable, *DATABASE_UNAVAILABLE)


def on_api(request: web.Request) -> bool:
    """Whether the request is on the JSON API; everything else (what Nix and Prometheus read) answers text."""
    path = request.path
    return path.startswith("/api/") or path in ("/health", "/ready")


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


def error_response(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """The error answer in the request's surface's format; a 401 carries that surface's challenge."""
    headers = dict(headers or {})
    api = on_api(request)
    if status == 401:
        headers["WWW-Authenticate"] = API_CHALLENGE if api else NIX_CHALLENGE
    if api:
        return json_error(status, code, message, headers, **extra)
    return web.Response(status=status, text=message + "\n", headers=headers)


def unavailable(request: web.Request, exc: BaseException) -> web.Response:
    """The answer to a backend failure (logged here with its detail): 503, or 429 on the API if S3 throttles.

    Nix retries a 503 (and has not always retried a 429), so what it reads answers S3's throttling as a 503 with
    S3's ``Retry-After``."""
    if isinstance(exc, StorageThrottled):
        retry = max(1, int(exc.retry_after))
        logger.warning("S3 throttled %s %s: %s", request.method, request.path, exc)
        return error_response(
            request,
            429 if on_api(request) else 503,
            "throttled",
            "the storage backend is throttling; retry later",
            {"Retry-After": str(retry)},
            retry_after=retry,
        )
    if isinstance(exc, DATABASE_UNAVAILABLE):
        # PostgreSQL is away, stalled or saturated: every wait on it is bounded (docs/configuration.md), and what
        # runs out is a 503 the client may retry, logged without a traceback (there is nothing in our code to fix).
        logger.warning(
            "%s %s: the database is unavailable: %s", request.method, request.path, str(exc) or type(exc).__name__
        )
    elif isinstance(exc, StorageUnavailable):  # the same for S3 (docs/operations.md)
        logger.warning("%s %s: S3 is unavailable: %s", request.method, request.path, exc)
    else:
        logger.error("%s %s failed: %s", request.method, request.path, exc, exc_info=True)
    return error_response(
        request,
        503,
        "unavailable",
        "a backend is unavailable; retry later",
        {"Retry-After": str(RETRY_AFTER)},
        retry_after=RETRY_AFTER,
    )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (RequestError, ApiError) as exc:
        if isinstance(exc, ApiError):
            status = exc.status
        else:
            status = next(s for cls, s in _REQUEST_STATUS if isinstance(exc, cls))
        headers = {}
        if "retry_after" in exc.details:
            headers["Retry-After"] = str(int(exc.details["retry_after"]))
        return error_response(request, status, exc.code, exc.message, headers, **exc.details)
    except NixFormatError as exc:
        return error_response(request, 400, "invalid_request", str(exc))
    except ConnectionResetError as exc:
        # Writing to a client that went away (it closed before the headers were sent): not a server error.
        if _client_gone(request):
            logger.info("%s %s: the client went away before the answer was sent", request.method, request.path)
            return web.Response(status=CLIENT_GONE)
        return unavailable(request, exc)
    except _BACKEND_FAILURES as exc:
        if isinstance(exc, _OUTAGES) and _client_gone(request):
            # An outage met a request whose client had gone: nobody gets the 503, and /ready tells of the outage.
            logger.info(
                "%s %s: the client went away before the answer was sent (and a backend was unavailable: %s)",
                request.method,
                request.path,
                str(exc) or type(exc).__name__,
            )
            return web.Response(status=CLIENT_GONE)
        return unavailable(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        if exc.status == 413:
            message = f"the request body is larger than the limit of {request.app._client_max_size} bytes"
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(request, exc.status, code, message, allow)
    except Exception:
        logger.exception("%s %s failed with an unexpected error", request.method, request.path)
        return error_response(request, 500, "internal_error", "the server failed; the details are in its log")
