"""The first steps of a run: expire stale upload sessions, forget old closed ones, drop expired pushed roots.

A session open past its ``expires_at`` becomes ``expired``: its claims go (so the keys it held are no longer roots)
and its multipart uploads are aborted, best effort (the policy of :mod:`niks3d.uploads.closing`). Expiring takes the
session row's lock, so a ``complete`` that is publishing holds it off and wins (the row is then ``completed`` and
stays). Closed sessions are kept for one more ``gc.session_expiry`` after they ended, so that a client retrying
``complete`` still gets its answer, and then deleted. A pushed root expires when its last push is older than
``older_than``; a push that renews it concurrently either lands first (the row no longer matches) or re-inserts it.
"""

from __future__ import annotations

__all__ = ["count_expirable", "drop_expired_roots", "expire_sessions"]

import logging
from collections import Counter
from datetime import datetime, timedelta

from niks3d.db import paths as db_paths
from niks3d.db import sessions as db_sessions
from niks3d.db.pool import DbPool
from niks3d.storage.s3 import Bucket
from niks3d.uploads.closing import tidy_released

logger = logging.getLogger(__name__)


async def expire_sessions(pool: DbPool, bucket: Bucket, *, now: datetime, keep_closed: timedelta) -> Counter[str]:
    """Expire open sessions past their expiry and abort their uploads; forget sessions closed before
    ``now - keep_closed``. Counts ``sessions_expired``, ``sessions_forgotten``, ``uploads_aborted``."""
    counts: Counter[str] = Counter()
    async with pool.acquire() as conn, conn.transaction():
        ids, released = await db_sessions.expire_due(conn, now)
        counts["sessions_forgotten"] = await db_sessions.forget_closed(conn, now - keep_closed)
    counts["sessions_expired"] = len(ids)
    for session_id in ids:
        logger.info("upload session %s expired", session_id)
    # a client may still be writing through a presigned URL: its staged objects wait for the staging sweep
    tidied = await tidy_released(bucket, released, delete_staged=False)
    counts["uploads_aborted"] += tidied["uploads_aborted"]
    counts["cleanup_errors"] += tidied["cleanup_errors"]
    return counts


async def drop_expired_roots(pool: DbPool, *, retention: datetime) -> int:
    """Delete pushed roots last pushed before ``retention``; returns how many."""
    async with pool.acquire() as conn:
        return await db_paths.drop_roots_before(conn, retention)


async def count_expirable(pool: DbPool, *, now: datetime, retention: datetime) -> Counter[str]:
    """For a dry run: the sessions that would expire and the roots that would be dropped."""
    async with pool.acquire() as conn:
        sessions = await db_sessions.count_due(conn, now)
        roots = await db_paths.count_roots_before(conn, retention)
    return Counter({"sessions_expired": sessions, "roots_expired": roots})
