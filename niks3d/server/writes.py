"""Handlers of the HTTP binary cache write protocol: ``nix copy --to http://<niks3d>`` (docs/api.md).

Thin, like every handler: they authorize (a token with the ``push`` scope, as Bearer or as the HTTP Basic
password of Nix's ``netrc-file``), take the key from the raw path (under ``server.proxy_prefix``, optionally
under ``roots/<name>/`` for a named root), read the body and call :mod:`niks3d.writes`.

A failed PUT aborts ``nix copy`` with the status and this server's message. Server trouble (S3 or PostgreSQL)
is answered with 424, never a 5xx: Nix up to 2.33 retries a PUT after a 5xx without sending its body again and
then hangs (docs/protocol.md 5.4), so a 4xx that says what happened serves it better.
"""

from __future__ import annotations

__all__ = ["delete_root", "get_root", "put_file"]

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from niks3d import writes
from niks3d.db import writes as db_writes
from niks3d.errors import (
    ApiError,
    DatabaseError,
    InvalidRequest,
    MissingPrerequisite,
    NotFound,
    StorageError,
    StorageUnavailable,
    Unsupported,
)
from niks3d.nix.bucketkeys import BucketKey
from niks3d.nix.decompress import StreamDecompressor
from niks3d.nix.errors import InvalidNar
from niks3d.server.auth import require
from niks3d.server.keys import config_key, pool_key, push_key
from niks3d.server.proxy import ROOT_NAME_RE, proxy_key

logger = logging.getLogger(__name__)
# Content-Encoding of a narinfo, listing or log PUT (Nix 2.32+ narinfo-/ls-/log-compression) -> decompressor.
_ENCODINGS = {"identity": None, "xz": "xz", "zstd": "zstd", "gzip": "gzip", "bzip2": "bzip2", "x-gzip": "gzip"}


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


async def _decoded(request: web.Request) -> bytes:
    """The whole (small) body, decoded per its Content-Encoding; bounded by ``server.max_body_bytes``."""
    raw = await request.read()  # 413 past client_max_size
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in _ENCODINGS:
        raise Unsupported(f"Content-Encoding {encoding!r} is not accepted; use zstd or xz", code="unsupported_encoding")
    compression = _ENCODINGS[encoding]
    if compression is None:
        return raw
    limit = request.app[config_key].settings.server.max_body_bytes
    out = bytearray()

    def sink(data: bytes) -> None:
        out.extend(data)
        if len(out) > limit:
            raise ApiError(413, "body_too_large", f"the decoded body is larger than the limit of {limit} bytes")

    try:
        decoder = StreamDecompressor(compression, sink)
        decoder.feed(raw)
        decoder.finish()
    except InvalidNar as exc:
        raise InvalidRequest(f"the body is not valid {encoding}: {exc.reason}", code="invalid_encoding") from None
    return bytes(out)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The body's chunks as aiohttp received them (``iter_chunked`` would join them into new bytes: a copy)."""
    try:
        async for chunk, _ in request.content.iter_chunks():
            if chunk:
                yield chunk
    except (HttpProcessingError, ConnectionError) as exc:
        raise InvalidRequest(f"the body ended early: {exc}", code="truncated_body") from None


def _target(request: web.Request) -> tuple[BucketKey | None, str | None]:
    proxy = request.app[proxy_key]
    return proxy.key_of(request), proxy.root_of(request)


async def put_file(request: web.Request) -> web.StreamResponse:
    """Every PUT under the cache prefix, dispatched by the kind of key."""
    # A refusal is a 401/403 in plain text, which Nix prints (niks3d.server.errors).
    identity = require(request, "push")
    token_name = identity.name
    key, root = _target(request)
    if key is None:
        return _text(404, "this is not a key of a Nix binary cache")
    ctx = request.app[push_key]
    try:
        if key.kind == "nar":
            if request.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise Unsupported(
                    "a NAR is sent as it is stored, without Content-Encoding", code="unsupported_encoding"
                )
            nar = await writes.ingest_nar(
                ctx, key.key, _body(request), length=request.content_length, token_name=token_name
            )
            return _text(201 if nar.created else 200, f"{key.key}: {nar.facts.nar_size} bytes of NAR, checked")
        if key.kind == "narinfo":
            assert key.hash_part is not None
            done = await writes.commit_narinfo(
                ctx, key.hash_part, await _decoded(request), token_name=token_name, root=root
            )
            return _text(201 if done.created else 200, f"{done.path}: published")
        if key.kind == "ls":
            assert key.hash_part is not None
            listing = await writes.put_listing(ctx, key.hash_part, key.key, await _decoded(request))
            answer = "recorded; the listing of the path's NAR is published with it" if listing.created else "the same"
            return _text(201 if listing.created else 200, f"{key.key}: {answer}")
        if key.kind == "log":
            drv = key.key.removeprefix("log/")
            log = await writes.put_log(
                ctx, drv, key.key, await _decoded(request), identity=token_name, trusted=identity.trusted
            )
            return _text(201 if log.created else 200, f"{key.key}: stored")
        if key.kind == "nix-cache-info":
            writes.put_cache_info(ctx.settings.cache.store_dir, await request.read())
            return _text(200, "nix-cache-info: this cache's own is kept")
        raise MissingPrerequisite(
            f"{key.key}: realisations are accepted through `niks3 push` only; use it for CA derivations",
            code="unsupported_upload",
        )
    except (StorageError, DatabaseError) as exc:
        if isinstance(exc, StorageUnavailable):  # an outage of S3, not a failure of ours (docs/operations.md)
            logger.warning("PUT %s failed: S3 is unavailable: %s", key.key, exc)
        else:
            logger.error("PUT %s failed: %s", key.key, exc, exc_info=True)
        raise ApiError(
            424, "backend_failed", "the storage or the database of this cache failed; nothing was published, retry"
        ) from None


def _root_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not ROOT_NAME_RE.fullmatch(name):
        raise InvalidRequest(f"root name {name[:80]!r} must match {ROOT_NAME_RE.pattern}", code="invalid_root")
    return name


async def get_root(request: web.Request) -> web.Response:
    require(request, "read", "pin")
    name = _root_name(request)
    async with request.app[pool_key].acquire() as conn:
        members = await db_writes.list_root(conn, name)
    if not members:
        raise NotFound(f"no named root {name!r}", code="root_not_found")
    return web.json_response(
        {
            "name": name,
            "paths": [{"path": p, "added_at": at.isoformat(), "added_by": by} for p, at, by in members],
        }
    )


async def delete_root(request: web.Request) -> web.Response:
    require(request, "pin")
    name = _root_name(request)
    async with request.app[pool_key].acquire() as conn:
        count = await db_writes.delete_root(conn, name)
    if not count:
        raise NotFound(f"no named root {name!r}", code="root_not_found")
    return web.json_response({"name": name, "deleted": count})
