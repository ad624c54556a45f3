"""Staging leftovers: what clients uploaded under ``staging/<session>/`` that no open session needs any more.

Clients upload to their session's staging keys; niks3d copies each object into place after its checks and
deletes the staged one (docs/security.md, rule 2). What is left there belongs to a session that was aborted,
expired or forgotten, or was written through a presigned URL after its session closed (a URL stays valid until
``s3.presign_expiry``, but it can only write a staging key, which nothing reads). Each run deletes the staged
objects and aborts the staged multipart uploads of every session that is not open, once they are older than
the grace period (a session's row is committed before any URL for it exists, so a younger unknown session is
only possible through a clock skew, which the grace period covers too).
"""

from __future__ import annotations

__all__ = ["sweep_staging"]

import logging
import uuid
from collections import Counter
from datetime import datetime

from niks3d.db import uploads as db
from niks3d.db.pool import DbPool
from niks3d.nix.bucketkeys import STAGING_PREFIX, staging_session
from niks3d.storage.s3 import Bucket

logger = logging.getLogger(__name__)


async def _closed(pool: DbPool, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    async with pool.acquire() as conn:
        still_open = await db.open_session_ids(conn, [uuid.UUID(i) for i in ids])
    return ids - {str(i) for i in still_open}


async def sweep_staging(pool: DbPool, bucket: Bucket, *, grace: datetime, dry_run: bool) -> Counter[str]:
    """Delete (or count) staged objects and multipart uploads of sessions that are not open.

    Counts ``staging_deleted``, ``staging_bytes`` and ``staging_uploads_aborted``.
    """
    counts: Counter[str] = Counter()
    objects = [o async for o in bucket.iter_objects(STAGING_PREFIX) if o.last_modified < grace]
    uploads = [u async for u in bucket.iter_multipart_uploads(STAGING_PREFIX) if u.initiated < grace]
    sessions = {s for s in (staging_session(o.key) for o in objects) if s}
    sessions |= {s for s in (staging_session(u.key) for u in uploads) if s}
    closed = await _closed(pool, sessions)
    doomed = [o for o in objects if staging_session(o.key) in closed]
    counts["staging_deleted"] = len(doomed)
    counts["staging_bytes"] = sum(o.size for o in doomed)
    stale = [u for u in uploads if staging_session(u.key) in closed]
    counts["staging_uploads_aborted"] = len(stale)
    if dry_run:
        return counts
    if doomed:
        logger.info("deleting %d staged objects of %d closed sessions", len(doomed), len(closed))
        await bucket.delete_many([o.key for o in doomed])
    for upload in stale:
        await bucket.abort_multipart(upload.key, upload.upload_id)
    return counts
