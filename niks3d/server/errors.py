"""The error middleware: every failure becomes a JSON answer through one explicit table.

4xx answers say what was wrong; a 5xx says only that the server failed, and the detail goes to the log.
No path, exception text or traceback reaches a client for a 5xx (test_error_responses.py proves it).
"""

from __future__ import annotations

__all__ = ["error_middleware", "json_error"]

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from niks3d.errors import ApiError, DatabaseError, StorageError, StorageThrottled
from niks3d.nix.errors import NixFormatError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP exceptions -> (code, message) for a JSON body
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "the request is malformed"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here"),
    413: ("body_too_large", "the request body is too large"),
    415: ("unsupported_media_type", "send application/json"),
}


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="niks3d"'
        if "retry_after" in exc.details:
            headers["Retry-After"] = str(int(exc.details["retry_after"]))
        return json_error(exc.status, exc.code, exc.message, headers, **exc.details)
    except NixFormatError as exc:
        return json_error(400, "invalid_request", str(exc))
    except StorageThrottled as exc:
        retry = max(1, int(exc.retry_after))
        logger.warning("S3 throttled %s %s: %s", request.method, request.path, exc)
        return json_error(
            429,
            "throttled",
            "the storage backend is throttling; retry later",
            {"Retry-After": str(retry)},
            retry_after=retry,
        )
    except (StorageError, DatabaseError, OSError) as exc:
        logger.error("%s %s failed: %s", request.method, request.path, exc, exc_info=True)
        return json_error(
            503, "unavailable", "a backend is unavailable; retry later", {"Retry-After": "5"}, retry_after=5
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        if exc.status == 413:
            message = f"the request body is larger than the limit of {request.app._client_max_size} bytes"
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, code, message, allow)
    except Exception:
        logger.exception("%s %s failed with an unexpected error", request.method, request.path)
        return json_error(500, "internal_error", "the server failed; the details are in its log")
