"""What the bucket holds that the database does not know: untracked objects and abandoned multipart uploads.

Every object niks3d writes has a row before it is written (design invariant 4), so an object under one of the
cache's keys without a row was left by a crash, by an older database, or by hand. Such an object, once older than
the grace period, is *adopted*: it gets a ``pending`` row dated by its LastModified, and the sweep then deletes it
like any other unneeded pending object, under the same locks and re-checks (a push that wants the key meanwhile
claims the adopted row and uploads again). ``nix-cache-info`` and keys that do not parse as cache keys are never
touched. Multipart uploads older than the grace period that no session's claim names are aborted.
"""

from __future__ import annotations

__all__ = ["abort_stale_uploads", "adopt_orphans", "listing_prefixes"]

import asyncio
import logging
from collections import Counter
from datetime import datetime

from niks3d.db.gc import orphans as db
from niks3d.db.pool import DbPool
from niks3d.nix.bucketkeys import parse_bucket_key
from niks3d.nix.errors import NixFormatError
from niks3d.storage.models import ObjectInfo, UploadInfo
from niks3d.storage.s3 import Bucket

logger = logging.getLogger(__name__)

_PAGE = 1000
# Prefixes listed at once: a big bucket lists in parallel, a small one costs a few hundred tiny requests.
LIST_CONCURRENCY = 8
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def listing_prefixes() -> list[str]:
    """Disjoint key prefixes that together cover every key the cache writes, to list the bucket in parallel.

    Root keys (``<hash>.narinfo``, ``<hash>.ls``) are split by the hash's first character; where that character
    also starts a directory (``l``og/, ``r``ealisations/, ``b``uild-trace-v2/, ``n``ar/) by the next ones, which
    never continue the directory's name (``o``, ``e``, ``u`` are not nix32 characters, ``na`` and ``nar`` need
    one and two more). Directories are split by the first character after the slash.
    """
    prefixes = [c for c in _NIX32 if c not in "lrbn"]
    prefixes += [c + d for c in "lrb" for d in _NIX32]
    prefixes += ["n" + d for d in _NIX32 if d != "a"] + ["na" + d for d in _NIX32 if d != "r"]
    prefixes += ["nar" + d for d in _NIX32]
    for directory in ("nar/", "log/", "build-trace-v2/"):
        prefixes += [directory + c for c in _NIX32]
    prefixes.append("realisations/")
    return prefixes


def _cache_kind(key: str) -> str | None:
    """The ``objects.kind`` of a bucket key, or None for keys GC must leave alone."""
    try:
        parsed = parse_bucket_key(key)
    except NixFormatError:
        return None
    return None if parsed.kind == "nix-cache-info" else parsed.kind


async def _adopt_page(pool: DbPool, page: list[tuple[ObjectInfo, str]], *, dry_run: bool) -> list[ObjectInfo]:
    """The objects of ``page`` that have no row; unless ``dry_run``, give them pending rows."""
    async with pool.acquire() as conn:
        if dry_run:
            found = await db.untracked(conn, [info.key for info, _ in page])
        else:
            found = await db.adopt(conn, [(info.key, kind, info.size, info.last_modified) for info, kind in page])
    return [info for info, _ in page if info.key in found]


async def adopt_orphans(pool: DbPool, bucket: Bucket, *, grace: datetime, dry_run: bool) -> Counter[str]:
    """List the bucket and adopt (or, in a dry run, count) untracked cache objects last modified before ``grace``.

    Counts: ``bucket_objects`` listed (under the cache's key prefixes), ``orphans`` found, ``orphan_bytes``.
    """
    counts: Counter[str] = Counter()
    slots = asyncio.Semaphore(LIST_CONCURRENCY)

    async def flush(page: list[tuple[ObjectInfo, str]]) -> None:
        for info in await _adopt_page(pool, page, dry_run=dry_run):
            counts["orphans"] += 1
            counts["orphan_bytes"] += info.size
            logger.debug("untracked object %s (%d bytes, %s)", info.key, info.size, info.last_modified.isoformat())
        page.clear()

    async def scan(prefix: str) -> None:
        page: list[tuple[ObjectInfo, str]] = []
        async with slots:
            async for info in bucket.iter_objects(prefix):
                counts["bucket_objects"] += 1
                if info.last_modified >= grace:
                    continue
                kind = _cache_kind(info.key)
                if kind is None:
                    continue
                page.append((info, kind))
                if len(page) >= _PAGE:
                    await flush(page)
            if page:
                await flush(page)

    async with asyncio.TaskGroup() as group:
        for prefix in listing_prefixes():
            group.create_task(scan(prefix))
    return counts


async def _unclaimed(pool: DbPool, uploads: list[UploadInfo]) -> list[UploadInfo]:
    """The uploads that no claim names: neither by upload id, nor as an uploader still about to record its id."""
    async with pool.acquire() as conn:
        claimed_ids = await db.claimed_upload_ids(conn, [u.upload_id for u in uploads])
        claimed_keys = await db.starting_uploads(conn, [u.key for u in uploads])
    return [u for u in uploads if u.upload_id not in claimed_ids and u.key not in claimed_keys]


async def abort_stale_uploads(pool: DbPool, bucket: Bucket, *, grace: datetime, dry_run: bool) -> Counter[str]:
    """Abort (or count) multipart uploads under cache keys, started before ``grace``, that no session owns."""
    counts: Counter[str] = Counter()
    candidates = [u async for u in bucket.iter_multipart_uploads() if u.initiated < grace and _cache_kind(u.key)]
    for start in range(0, len(candidates), _PAGE):
        for upload in await _unclaimed(pool, candidates[start : start + _PAGE]):
            counts["uploads_aborted"] += 1
            if dry_run:
                continue
            logger.info("aborting abandoned multipart upload %s of %s", upload.upload_id, upload.key)
            await bucket.abort_multipart(upload.key, upload.upload_id)
    return counts
