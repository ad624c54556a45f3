"""The read proxy: the binary cache over HTTP under ``server.proxy_prefix`` (docs/proxy.md).

- ``nix-cache-info`` comes from the configuration (the bytes niks3d writes to the bucket at start-up);
- ``<hash>.narinfo`` from the narinfo cache or the ``store_paths`` row, never from S3;
- NARs are streamed from S3 with ranges and ETags, or redirected to a short-lived presigned GET
  (``server.nar_mode``);
- ``.ls`` files, build logs and realisations are streamed with their stored ``Content-Encoding``, decoded on the
  fly for a client whose ``Accept-Encoding`` does not take it.

Every key is taken from the raw request path (Nix does not percent-encode ``?``, ``=`` or ``+`` in log names),
decoded once, and validated with :func:`~niks3d.nix.bucketkeys.parse_bucket_key`: anything outside the cache's
key space is a 404 and never reaches S3. Missing objects are 404; S3 or PostgreSQL trouble before the first byte
is a 503 with ``Retry-After``. In private mode every request needs a token with the ``read`` scope. Every refusal
and failure is raised and answered by :mod:`niks3d.server.errors`, as plain text like all of this surface.
"""

from __future__ import annotations

__all__ = [
    "ROOT_NAME_RE",
    "ReadProxy",
    "cache_file",
    "nar",
    "narinfo",
    "nix_cache_info",
    "open_read_proxy",
    "proxy_key",
]

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import asyncpg
from aiohttp import web

from niks3d.config import Config
from niks3d.db.paths import narinfo_by_hash
from niks3d.errors import DatabaseError, NotFound, ObjectNotFound
from niks3d.nix.bucketkeys import CONTENT_TYPES, BucketKey, parse_bucket_key
from niks3d.nix.errors import NixFormatError
from niks3d.nix.narinfo import render_nix_cache_info
from niks3d.server.auth import require
from niks3d.server.errors import error_response
from niks3d.server.metrics import metrics_key
from niks3d.server.narinfo_cache import NarinfoCache, running_cache
from niks3d.server.relay import (
    Relay,
    Upstream,
    ZstdStream,
    etag_matches,
    open_relay,
    parse_range,
    send_body,
    strong_tags,
)
from niks3d.storage import Bucket, RangeNotSatisfiable

logger = logging.getLogger(__name__)

# A named root in the cache URL, ``<prefix>/roots/<name>/`` (the same names as pins).
ROOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The application_name of the connection that listens for narinfo changes (visible in pg_stat_activity).
LISTENER_NAME = "niks3d narinfo-cache"
NARINFO_TYPE = CONTENT_TYPES["narinfo"]
NAR_TYPE = CONTENT_TYPES["nar"]
# The kinds cache_file serves, and their Content-Type when S3 has none.
_DEFAULT_TYPES = {kind: CONTENT_TYPES[kind] for kind in ("ls", "log", "realisation")}


@dataclass(frozen=True)
class ReadProxy:
    """What the proxy's handlers share: settings in ready form, the narinfo cache and the S3 relay."""

    prefix: str  # "" for the root, else "/cache" (no trailing slash)
    private: bool
    redirect: bool
    cache_info: bytes
    cache: NarinfoCache
    relay: Relay

    def _rest(self, request: web.Request) -> tuple[str | None, str] | None:
        """(named root or None, the rest of the raw path after the prefix and ``roots/<name>/``)."""
        raw = request.raw_path
        if not raw.startswith(self.prefix + "/"):
            return None
        rest = raw[len(self.prefix) + 1 :]
        if rest.startswith("roots/"):
            name, slash, rest = rest[len("roots/") :].partition("/")
            if not slash or not ROOT_NAME_RE.fullmatch(name):
                return None
            return name, rest
        return None, rest

    def key_of(self, request: web.Request) -> BucketKey | None:
        """The bucket key a request names, from its raw path, decoded once; None if it is not a valid key.

        Under ``roots/<name>/`` (a named root's cache URL, docs/api.md) the same keys are served."""
        split = self._rest(request)
        if split is None:
            return None
        try:
            return parse_bucket_key(unquote(split[1], errors="strict"))
        except (NixFormatError, UnicodeDecodeError):
            return None

    def root_of(self, request: web.Request) -> str | None:
        """The named root of a request under ``roots/<name>/``, or None."""
        split = self._rest(request)
        return split[0] if split else None


# Set only when server.read_proxy is not "off".
proxy_key: web.AppKey[ReadProxy] = web.AppKey("proxy_key")


@asynccontextmanager
async def open_read_proxy(config: Config, pool: asyncpg.Pool, bucket: Bucket) -> AsyncIterator[ReadProxy]:
    """The proxy's resources: the narinfo cache (with its notification connection) and the S3 relay."""
    settings = config.settings
    database = settings.database

    async def fetch(hash_part: str) -> str | None:
        try:
            async with pool.acquire() as conn:
                return await narinfo_by_hash(conn, hash_part)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(f"looking up the narinfo of {hash_part} failed: {exc}") from exc

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            database.url,
            password=config.secrets.database_password,
            timeout=database.connect_timeout,
            server_settings={"application_name": LISTENER_NAME},
        )

    server = settings.server
    cache_info = render_nix_cache_info(
        settings.cache.store_dir, settings.cache.want_mass_query, settings.cache.priority
    )
    async with (
        running_cache(fetch, connect, max_bytes=server.narinfo_cache_bytes) as cache,
        open_relay(bucket) as relay,
    ):
        yield ReadProxy(
            prefix="" if server.proxy_prefix == "/" else server.proxy_prefix,
            private=server.read_proxy == "private",
            redirect=server.nar_mode == "redirect",
            cache_info=cache_info.encode(),
            cache=cache,
            relay=relay,
        )


def _missing(what: str) -> NotFound:
    return NotFound(f"{what} is not in this cache")


def _count(request: web.Request, kind: str, result: tuple[int, bool]) -> None:
    request.app[metrics_key].served(kind, result[0], complete=result[1])


async def nix_cache_info(request: web.Request) -> web.Response:
    proxy = request.app[proxy_key]
    if proxy.private:
        require(request, "read")
    return web.Response(body=proxy.cache_info, content_type=CONTENT_TYPES["nix-cache-info"])


async def narinfo(request: web.Request) -> web.Response:
    proxy = request.app[proxy_key]
    if proxy.private:
        require(request, "read")
    name = request.match_info["narinfo"]
    # A hit needs no validation (only validated hash parts are ever stored); anything else is parsed first.
    entry = proxy.cache.hit(name[: -len(".narinfo")])
    if entry is None:
        try:
            key = parse_bucket_key(name)
        except NixFormatError:
            raise _missing(repr(name[:80])) from None
        if key.kind != "narinfo" or key.hash_part is None:
            raise _missing(repr(name[:80]))
        entry = await proxy.cache.get(key.hash_part)
        if entry is None:
            raise _missing(name)
    condition = request.headers.get("If-None-Match")
    if condition is not None and etag_matches(condition, entry.etag):
        return web.Response(status=304, headers={"ETag": entry.etag})
    _count(request, "narinfo", (len(entry.body), True))
    return web.Response(body=entry.body, headers={"Content-Type": NARINFO_TYPE, "ETag": entry.etag})


async def _open(request: web.Request, relay: Relay, key: str, *, nar: bool) -> Upstream:
    """HEAD or GET ``key``; ranges and ``If-None-Match`` are honoured for NARs only."""
    if request.method == "HEAD":
        upstream = await relay.head(key)
        condition = request.headers.get("If-None-Match")
        if nar and condition is not None and upstream.etag is not None and etag_matches(condition, upstream.etag):
            upstream.status = 304
        return upstream
    if not nar:
        return await relay.open(key)
    byte_range = None if "If-Range" in request.headers else parse_range(request.headers.get("Range"))
    condition = request.headers.get("If-None-Match")
    # Weak comparison, as for HEAD above (RFC 9110 section 13.1.2).
    if_none_match = strong_tags(condition) if condition is not None else None
    return await relay.open(key, byte_range=byte_range, if_none_match=if_none_match or None)


async def _answer(
    request: web.Request,
    upstream: Upstream,
    kind: str,
    headers: dict[str, str],
    *,
    length: int | None,
    decoder: ZstdStream | None = None,
) -> web.StreamResponse:
    """Send ``upstream``'s status and ``headers``, then (for GET) its body; ``upstream`` is closed in any case."""
    try:
        if upstream.status == 304:
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        if request.method != "HEAD":
            _count(request, kind, await send_body(request, response, upstream, decoder=decoder))
        return response
    finally:
        await upstream.aclose()


async def nar(request: web.Request) -> web.StreamResponse:
    proxy = request.app[proxy_key]
    if proxy.private:
        require(request, "read")
    key = proxy.key_of(request)
    if key is None or key.kind != "nar":
        raise _missing("this NAR")
    if proxy.redirect:
        url = await proxy.relay.redirects.get(key.key)
        return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    try:
        upstream = await _open(request, proxy.relay, key.key, nar=True)
    except ObjectNotFound:
        raise _missing(key.key) from None
    except RangeNotSatisfiable as exc:
        headers = {"Content-Range": f"bytes */{exc.size}"} if exc.size is not None else {}
        message = "the requested range is not satisfiable"
        return error_response(request, 416, "range_not_satisfiable", message, {**headers, "Accept-Ranges": "bytes"})
    # Never a Content-Encoding on a NAR (docs/protocol.md 5.1): Nix decompresses per the narinfo's Compression.
    headers = {"Content-Type": NAR_TYPE, "Accept-Ranges": "bytes"}
    if upstream.etag:
        headers["ETag"] = upstream.etag
    if upstream.last_modified:
        headers["Last-Modified"] = upstream.last_modified
    if upstream.status == 206 and upstream.content_range:
        headers["Content-Range"] = upstream.content_range
    return await _answer(request, upstream, "nar", headers, length=upstream.length)


def _accepts(header: str | None, coding: str) -> bool:
    """Whether ``Accept-Encoding`` allows ``coding`` (named or ``*``, with a non-zero q)."""
    if not header:
        return False
    for item in header.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in (coding, "*"):
            continue
        q = params.strip()
        if q.lower().startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


async def cache_file(request: web.Request) -> web.StreamResponse:
    """``.ls`` listings, build logs and realisations, with their stored Content-Encoding (or decoded)."""
    proxy = request.app[proxy_key]
    if proxy.private:
        require(request, "read")
    key = proxy.key_of(request)
    if key is None or key.kind not in _DEFAULT_TYPES:
        raise _missing("this file")
    try:
        upstream = await _open(request, proxy.relay, key.key, nar=False)
    except ObjectNotFound:
        raise _missing(key.key) from None
    encoding = (upstream.content_encoding or "").strip().lower() or None
    headers = {"Content-Type": upstream.content_type or _DEFAULT_TYPES[key.kind]}
    decoder = None
    if encoding is not None:
        headers["Vary"] = "Accept-Encoding"
        if encoding == "zstd" and not _accepts(request.headers.get("Accept-Encoding"), "zstd"):
            decoder = ZstdStream()
        else:
            headers["Content-Encoding"] = encoding
    if decoder is None and upstream.etag:
        headers["ETag"] = upstream.etag
    length = upstream.length if decoder is None else None
    return await _answer(request, upstream, key.kind, headers, length=length, decoder=decoder)
