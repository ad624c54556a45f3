"""One HTTP request with retries: the single place where the client sleeps and tries again.

Used for the niks3d API and for presigned S3 requests alike. A request is retried after a connection error,
a timeout, or a retryable status (:data:`~niks3d.client.retry.RETRYABLE_STATUSES`), waiting as
:class:`~niks3d.client.retry.RetryPolicy` says and honouring ``Retry-After``. The body is produced afresh for
every try by a factory, so a streamed upload can be repeated.
"""

from __future__ import annotations

__all__ = ["Body", "BodyFactory", "Response", "memory_body", "send"]

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from niks3d.client.retry import RetryPolicy, is_retryable_status, parse_retry_after
from niks3d.errors import ClientError

logger = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview
Body = Chunk | AsyncIterable[Chunk] | None
BodyFactory = Callable[[], Body]
_SLICE = 1 << 20

_TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Response:
    """A finished response: status, headers and the whole (small) body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def retry_after(self) -> float | None:
        """The ``Retry-After`` header in seconds, if any."""
        return parse_retry_after(self.headers.get("Retry-After"))


async def memory_body(data: bytes | bytearray | memoryview) -> AsyncIterator[memoryview]:
    """``data`` as a request body in 1 MiB views, never copied.

    Handing aiohttp a large ``bytes``/``bytearray`` whole costs two copies (a slice to the content length,
    then the transport's write buffer); in slices, only the slice being sent is buffered.
    """
    view = memoryview(data)
    for start in range(0, len(view), _SLICE):
        yield view[start : start + _SLICE]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    policy: RetryPolicy,
    headers: Mapping[str, str] | None = None,
    body: BodyFactory | None = None,
    limits: aiohttp.ClientTimeout | None = None,
    retry_statuses: Callable[[int], bool] = is_retryable_status,
) -> Response:
    """Send a request, retrying transient failures; return the last response, whatever its status.

    ``what`` names the request in log lines and errors (never the URL itself, which may be presigned). Raises
    :class:`ClientError` when every try failed to get any answer.
    """
    attempt = 0
    while True:
        try:
            data = body() if body is not None else None
            async with http.request(method, url, headers=headers, data=data, timeout=limits) as resp:
                answer = Response(resp.status, resp.headers, await resp.read())
        except _TRANSIENT as exc:
            if not policy.should_retry(attempt):
                raise ClientError(f"{what} failed after {attempt + 1} tries: {_describe(exc)}") from exc
            delay = policy.delay(attempt)
            logger.info("%s failed (%s); retrying in %.1f s", what, _describe(exc), delay)
        else:
            if not retry_statuses(answer.status) or not policy.should_retry(attempt):
                return answer
            delay = policy.delay(attempt, answer.retry_after)
            logger.info("%s answered %d; retrying in %.1f s", what, answer.status, delay)
        await asyncio.sleep(delay)
        attempt += 1
