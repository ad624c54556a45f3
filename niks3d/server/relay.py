"""Relaying objects from the bucket to a client: ranges, conditional GETs, and never a truncated 200.

:meth:`Relay.open` asks S3 for an object and returns once S3 has answered, so a missing key
(:class:`~niks3d.errors.ObjectNotFound`), a bad range (:class:`~niks3d.storage.RangeNotSatisfiable`) or an
unreachable S3 (:class:`~niks3d.errors.StorageError`) is known before the client gets its first byte and can
become a 404, 416 or 503. :func:`send_body` then copies the body; if S3 breaks off (or sends fewer bytes than it
announced) it closes the client's connection, so the client sees a body shorter than its ``Content-Length``
(or an unterminated chunked body) and retries, instead of a complete-looking answer.

GETs go to a presigned URL through a plain aiohttp client, which costs about half of a botocore GetObject per
request. The relay's URLs are signed for ``s3.endpoint_url``, the endpoint niks3d itself talks to, whatever
``s3.public_endpoint_url`` says; redirect mode's URLs are signed for the public endpoint, where clients go.
"""

from __future__ import annotations

__all__ = [
    "ByteRange",
    "PresignedUrls",
    "Relay",
    "Upstream",
    "ZstdStream",
    "etag_matches",
    "open_relay",
    "parse_range",
    "send_body",
    "strong_tags",
]

import asyncio
import email.utils
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import zstandard
from aiohttp import web

from niks3d.errors import ObjectNotFound, StorageError, StorageUnavailable
from niks3d.storage import Bucket
from niks3d.storage.errors import answer_error
from niks3d.storage.http import presigned_session
from niks3d.storage.models import normalize_etag
from niks3d.storage.s3 import range_header

logger = logging.getLogger(__name__)

ByteRange = tuple[int, int | None]
# Signing a URL costs a few hundred microseconds of botocore, so each is reused (popular NARs are asked for
# again and again) while it has long enough to live, at most URL_CACHE_SIZE of them. The relay's own URLs
# never leave the daemon; redirect URLs are reused for the first 2 of their 5 minutes.
RELAY_URL_TTL = timedelta(minutes=10)
RELAY_URL_REUSE = timedelta(minutes=5)
REDIRECT_TTL = timedelta(minutes=5)
REDIRECT_REUSE = timedelta(minutes=2)
URL_CACHE_SIZE = 16384
# ASCII digits only (RFC 9110 section 14.1.1: DIGIT is 0-9; ``\d`` would take any script's digits).
_RANGE_RE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})", re.ASCII)
# No S3 object is larger (5 TiB); a range end past it means "to the end", which is what RFC 9110 makes of an
# end past the object (section 14.1.2: clamped to the last byte). Sending it on as written would overflow the
# S3 server's 64-bit integers (SeaweedFS answers 416 to bytes=0-9999999999999999999).
MAX_OBJECT_BYTES = 5 << 40
_XML_CODE_RE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_ERROR_BODY_LIMIT = 64 * 1024
# How much of an object the relay buffers from S3 per connection; bigger means fewer, larger writes.
READ_BUFFER = 1 << 20


def parse_range(header: str | None) -> ByteRange | None:
    """One byte range from ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n``, as Bucket.open_stream takes it.

    Anything else (several ranges, other units, nonsense) is None: the header is ignored and the whole object
    served, as HTTP allows.
    """
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start, end = min(int(first), MAX_OBJECT_BYTES), int(last) if last else None
        if end is not None and end >= MAX_OBJECT_BYTES:
            end = None
        return None if end is not None and end < start else (start, end)
    if last and int(last) > 0:
        return (-min(int(last), MAX_OBJECT_BYTES), None)
    return None


def strong_tags(header: str) -> str:
    """``If-None-Match`` with every entity tag made strong (``W/"x"`` -> ``"x"``), for S3.

    RFC 9110 (section 13.1.2) compares If-None-Match weakly: ``W/"x"`` matches ``"x"``. S3 compares strongly, and
    the ETags of our objects are strong, so the header S3 gets carries the same tags without their ``W/``.
    """
    if header.strip() == "*":
        return "*"
    return ", ".join(f'"{normalize_etag(tag)}"' for tag in header.split(",") if tag.strip())


@dataclass
class Upstream:
    """S3's answer to one GET or HEAD: 200, 206 or 304, the headers the proxy passes on, and the body."""

    status: int
    length: int | None  # bytes in this body (Content-Length); None for a 304
    content_range: str | None
    etag: str | None  # quoted, as on the wire
    last_modified: str | None  # an HTTP date
    content_type: str | None
    content_encoding: str | None
    chunks: AsyncIterator[bytes] | None = None
    close: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        if self.close is not None:
            await self.close()


class PresignedUrls:
    """Presigned GET URLs valid for ``ttl``, each handed out again for ``reuse`` after it was signed."""

    def __init__(self, bucket: Bucket, *, ttl: timedelta, reuse: timedelta, internal: bool = False) -> None:
        self._bucket = bucket
        self._internal = internal
        self._ttl = ttl
        self._reuse = reuse.total_seconds()
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, key: str) -> str:
        now = time.monotonic()
        cached = self._urls.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        url = await self._bucket.presign_get(key, expires=self._ttl, internal=self._internal)
        self._urls[key] = (url, now + self._reuse)
        self._urls.move_to_end(key)
        if len(self._urls) > URL_CACHE_SIZE:
            self._urls.popitem(last=False)
        return url


class Relay:
    """Reads objects of one bucket for the read proxy; build it with :func:`open_relay`.

    ``redirects`` hands out the URLs of redirect mode (``nar_mode = "redirect"``).
    """

    def __init__(self, bucket: Bucket, http: aiohttp.ClientSession) -> None:
        self.bucket = bucket
        self._http = http
        self._urls = PresignedUrls(bucket, ttl=RELAY_URL_TTL, reuse=RELAY_URL_REUSE, internal=True)
        self.redirects = PresignedUrls(bucket, ttl=REDIRECT_TTL, reuse=REDIRECT_REUSE)

    async def head(self, key: str) -> Upstream:
        """HEAD ``key``; ObjectNotFound if it is absent."""
        info = await self.bucket.head(key)
        if info is None:
            raise ObjectNotFound(key)
        return Upstream(
            status=200,
            length=info.size,
            content_range=None,
            etag=f'"{info.etag}"' if info.etag else None,
            last_modified=_http_date(info.last_modified),
            content_type=info.content_type,
            content_encoding=info.content_encoding,
        )

    async def open(
        self, key: str, *, byte_range: ByteRange | None = None, if_none_match: str | None = None
    ) -> Upstream:
        """GET ``key`` (or ``byte_range`` of it); 304 when ``if_none_match`` names its ETag.

        Raises ObjectNotFound, RangeNotSatisfiable, or StorageError (StorageThrottled, StorageUnavailable) for S3
        trouble.
        """
        url = await self._urls.get(key)
        headers = {}
        if byte_range is not None:
            headers["Range"] = range_header(byte_range)
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        what = f"GET of {key!r} from bucket {self.bucket.name!r}"
        try:
            # Until S3's answer has its headers: s3.request_timeout (the body then reads under s3.read_timeout).
            async with asyncio.timeout(self.bucket.settings.request_timeout):
                resp = await self._http.get(url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StorageUnavailable(f"{what} failed: cannot reach the S3 endpoint: {exc}") from exc
        if resp.status in (200, 206, 304):
            return Upstream(
                status=resp.status,
                length=resp.content_length if resp.status != 304 else None,
                content_range=resp.headers.get("Content-Range"),
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
                content_type=resp.headers.get("Content-Type"),
                content_encoding=resp.headers.get("Content-Encoding"),
                chunks=resp.content.iter_any(),
                close=_closer(resp),
            )
        try:
            body = await resp.content.read(_ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, TimeoutError, OSError):
            body = b""
        finally:
            resp.release()
        m = _XML_CODE_RE.search(body)
        code = m.group(1).decode(errors="replace") if m else ""
        # The same rules as every other S3 call (throttling codes, S3's Retry-After): storage/errors.py.
        raise answer_error(what, key, resp.status, code, resp.headers)


def _http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def _closer(resp: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        resp.release()

    return close


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC 9110 wants for it)."""
    if header.strip() == "*":
        return True
    wanted = normalize_etag(etag)
    return any(normalize_etag(tag) == wanted for tag in header.split(","))


class ZstdStream:
    """Decompresses a zstd body as it streams, frame after frame; :meth:`finish` refuses a cut-off frame."""

    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._started = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._started = True
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data = self._frame.unused_data
            self._frame = self._decompressor.decompressobj()
            self._started = False
        return b"".join(out)

    def finish(self) -> None:
        if self._started:
            raise zstandard.ZstdError("the zstd stream ends in the middle of a frame")


async def send_body(
    request: web.Request, response: web.StreamResponse, upstream: Upstream, *, decoder: ZstdStream | None = None
) -> tuple[int, bool]:
    """Copy ``upstream``'s body to the prepared ``response``; the bytes sent, and whether the body is complete.

    If S3 breaks off, sends fewer bytes than it announced, or (with ``decoder``) ends inside a zstd frame, the
    client's connection is closed: the client sees a short body, never a complete one.
    """
    sent = received = 0
    complete = False
    try:
        if upstream.chunks is not None:
            async for chunk in upstream.chunks:
                received += len(chunk)
                data = decoder.feed(chunk) if decoder is not None else chunk
                if data:
                    await response.write(data)
                    sent += len(data)
        if upstream.length is not None and received != upstream.length:
            raise StorageError(f"S3 sent {received} of {upstream.length} bytes")
        if decoder is not None:
            decoder.finish()
        complete = True
    except ConnectionError:
        logger.debug("%s %s: the client went away after %d bytes", request.method, request.path, sent)
        _close(request)
    except (StorageError, aiohttp.ClientError, TimeoutError, OSError, zstandard.ZstdError) as exc:
        logger.warning(
            "%s %s: the body from S3 broke off after %d bytes (%s); closing the connection",
            request.method,
            request.path,
            sent,
            exc,
        )
        _close(request)
    finally:
        await upstream.aclose()
    return sent, complete


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


@asynccontextmanager
async def open_relay(bucket: Bucket, *, connections: int = 256) -> AsyncIterator[Relay]:
    """A :class:`Relay` with its own HTTP connection pool to S3 (niks3d/storage/http.py says why it is apart from
    the bucket's), closed at the end of the block."""
    settings = bucket.settings
    async with presigned_session(
        connections=connections,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        pool_wait=settings.connect_timeout,
        read_bufsize=READ_BUFFER,
    ) as http:
        yield Relay(bucket, http)
