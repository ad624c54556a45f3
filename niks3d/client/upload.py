"""Uploading an object, or one part of a multipart upload, with a presigned ``PUT`` (docs/api.md).

The request carries exactly the headers the server presigned plus ``Content-Length``; the body comes from a
factory, so that retries (connection errors, 429, 5xx; see :mod:`niks3d.client.transport`) send it again from
the start. S3 answers ``403`` when a presigned URL has expired (a long push, a slow link): then a fresh URL
is asked for once through ``refresh`` and the upload starts over.
"""

from __future__ import annotations

__all__ = ["PresignedRequest", "UploadFailed", "put_presigned"]

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from niks3d.client.retry import RetryPolicy
from niks3d.client.transport import BodyFactory, send
from niks3d.errors import ClientError

logger = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=300)
_S3_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")


class UploadFailed(ClientError):
    """S3 refused an upload for good."""


@dataclass(frozen=True)
class PresignedRequest:
    """Where and how to send one upload: URL, method and the exact headers the server presigned."""

    url: str
    method: str = "PUT"
    headers: Mapping[str, str] = field(default_factory=dict)


def _s3_reason(body: bytes) -> str:
    code = _S3_CODE.search(body)
    message = _S3_MESSAGE.search(body)
    parts = [m.group(1).decode("utf-8", "replace") for m in (code, message) if m]
    return ": ".join(parts) or body[:200].decode("utf-8", "replace").strip() or "no message"


async def put_presigned(
    http: aiohttp.ClientSession,
    request: PresignedRequest,
    body: BodyFactory,
    size: int,
    *,
    what: str,
    policy: RetryPolicy,
    refresh: Callable[[], Awaitable[PresignedRequest]] | None = None,
) -> None:
    """Upload ``size`` bytes from ``body`` with ``request``; raises :class:`UploadFailed` naming ``what``."""
    for renewed in (False, True):
        headers = {**request.headers, "Content-Length": str(size)}
        resp = await send(
            http,
            request.method,
            request.url,
            what=f"upload of {what}",
            policy=policy,
            headers=headers,
            body=body,
            limits=_TIMEOUT,
        )
        if 200 <= resp.status < 300:
            return
        reason = _s3_reason(resp.body)
        if resp.status == 403 and refresh is not None and not renewed:
            logger.info("upload of %s was refused (%s); asking for a fresh URL", what, reason)
            request = await refresh()
            continue
        raise UploadFailed(f"upload of {what} failed with HTTP {resp.status}: {reason}")
    raise AssertionError("unreachable")  # pragma: no cover
