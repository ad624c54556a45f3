"""One HTTP request with retries: the single place where the client sleeps and tries again.

Used for the niks3d API and for presigned S3 requests alike. A request is retried after a connection error,
a timeout, or a retryable status (:data:`~niks3d.client.retry.RETRYABLE_STATUSES`), waiting as
:class:`~niks3d.client.retry.RetryPolicy` says and honouring ``Retry-After``. The body is produced afresh for
every try by a factory, so a streamed upload can be repeated.
"""

from __future__ import annotations

__all__ = ["Body", "BodyFactory", "Response", "client_session", "memory_body", "send"]

import asyncio
import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from niks3d.client.proxies import proxy_for
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


def client_session() -> aiohttp.ClientSession:
    """The HTTP client of a ``niks3`` command: up to 64 connections, proxies chosen by :func:`send`.

    Not aiohttp's ``trust_env``: see :mod:`niks3d.client.proxies`.
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))


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
    ssl_context: ssl.SSLContext | None = None,
    refusal_hint: str | None = None,
) -> Response:
    """Send a request, retrying transient failures; return the last response, whatever its status.

    ``what`` names the request in log lines and errors (never the URL itself, which may be presigned). Raises
    :class:`ClientError` when every try failed to get any answer, and at once when the TLS handshake fails
    (an untrusted server certificate, a client certificate the server refused): trying again cannot help.
    ``ssl_context`` (the niks3d API's, docs/auth.md) replaces the default verification for this request.

    A server that refuses a client certificate under TLS 1.3 (another CA, expired) closes the connection without
    an answer, and the client sees only the disconnect. With ``refusal_hint`` (a client certificate is in use)
    such a disconnect is tried once more, not ``policy.attempts`` times, and the error ends with the hint.
    """
    attempt = 0
    proxy = proxy_for(url)
    options = proxy.request_options(url, headers) if proxy else {"headers": headers}
    while True:
        try:
            data = body() if body is not None else None
            async with http.request(method, url, data=data, timeout=limits, ssl=ssl_context or True, **options) as resp:
                answer = Response(resp.status, resp.headers, await resp.read())
        except aiohttp.ClientSSLError as exc:
            raise ClientError(f"{what} failed: the TLS handshake failed: {_describe(exc)}") from exc
        except _TRANSIENT as exc:
            refused = refusal_hint is not None and isinstance(exc, aiohttp.ServerDisconnectedError)
            if not policy.should_retry(attempt) or (refused and attempt >= 1):
                hint = f"; {refusal_hint}" if refused else ""
                raise ClientError(f"{what} failed after {attempt + 1} tries: {_describe(exc)}{hint}") from exc
            delay = policy.delay(attempt)
            logger.info("%s failed (%s); retrying in %.1f s", what, _describe(exc), delay)
        else:
            if not retry_statuses(answer.status) or not policy.should_retry(attempt):
                return answer
            delay = policy.delay(attempt, answer.retry_after)
            logger.info("%s answered %d; retrying in %.1f s", what, answer.status, delay)
        await asyncio.sleep(delay)
        attempt += 1
