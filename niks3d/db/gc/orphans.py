"""The statements of GC's look at the bucket (:mod:`niks3d.gc.orphans`): which listed keys have no row, the
adoption of untracked objects as ``pending`` rows, and which multipart uploads a session's claim still owns."""

from __future__ import annotations

__all__ = ["adopt", "claimed_upload_ids", "starting_uploads", "untracked"]

from collections.abc import Sequence
from datetime import datetime

from asyncpg import Connection


async def untracked(conn: Connection, keys: Sequence[str]) -> set[str]:
    """The keys among ``keys`` that have no ``objects`` row (a dry run's count)."""
    records = await conn.fetch(
        """SELECT k AS key FROM unnest($1::text[]) AS x(k)
           WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = x.k)""",
        list(keys),
    )
    return {r["key"] for r in records}


async def adopt(conn: Connection, rows: Sequence[tuple[str, str, int, datetime]]) -> set[str]:
    """Give the ``(key, kind, size, last_modified)`` objects that have no row a ``pending`` one dated by their
    LastModified (only where ``kind`` is the key's kind); returns the keys adopted."""
    records = await conn.fetch(
        """INSERT INTO objects (key, kind, state, size, created_at)
           SELECT k, t, 'pending', s, m
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) AS x(k, t, s, m)
           WHERE object_key_kind(k) = t
           ON CONFLICT (key) DO NOTHING
           RETURNING key""",
        [k for k, _, _, _ in rows],
        [t for _, t, _, _ in rows],
        [s for _, _, s, _ in rows],
        [m for _, _, _, m in rows],
    )
    return {r["key"] for r in records}


async def claimed_upload_ids(conn: Connection, upload_ids: Sequence[str]) -> set[str]:
    """The multipart upload ids among ``upload_ids`` that a session's claim records."""
    records = await conn.fetch(
        "SELECT upload_id FROM session_claims WHERE upload_id = ANY($1::text[])", list(upload_ids)
    )
    return {r["upload_id"] for r in records}


async def starting_uploads(conn: Connection, keys: Sequence[str]) -> set[str]:
    """The keys among ``keys`` whose uploader's claim has no upload id yet (it is about to record one)."""
    records = await conn.fetch(
        "SELECT key FROM session_claims WHERE key = ANY($1::text[]) AND uploader AND upload_id IS NULL", list(keys)
    )
    return {r["key"] for r in records}
