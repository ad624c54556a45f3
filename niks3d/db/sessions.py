"""Queries that close upload sessions: abort, expiry, completion, and forgetting closed sessions.

A session closes in one transaction that changes its row's state and releases its claims
(``session_claims``), so that from the commit on nothing it claimed is a root for GC any more. The released
claims are returned: what the session may have left in the bucket (multipart uploads, staged objects) is
tidied after the commit by :mod:`niks3d.uploads.closing`, under its one policy for S3 failures.
"""

from __future__ import annotations

__all__ = [
    "ReleasedClaim",
    "close_sessions",
    "complete_session",
    "count_due",
    "expire_due",
    "forget_closed",
    "release_claims",
]

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Connection

from niks3d.nix.bucketkeys import staging_key


@dataclass(frozen=True, slots=True)
class ReleasedClaim:
    """A claim a closing session (or a take-over) released: its key, multipart upload id, and whether the
    session was the key's uploader (then it may have staged the object)."""

    session_id: uuid.UUID
    key: str
    upload_id: str | None
    uploader: bool

    @property
    def staged(self) -> str:
        """Where the session's client uploads this key (docs/security.md, rule 2)."""
        return staging_key(str(self.session_id), self.key)


def released(records: Sequence[Any]) -> list[ReleasedClaim]:
    """Rows ``(session_id, key, upload_id, uploader)`` of a ``DELETE ... RETURNING`` as released claims."""
    return [ReleasedClaim(r["session_id"], r["key"], r["upload_id"], r["uploader"]) for r in records]


async def release_claims(conn: Connection, session_ids: Sequence[uuid.UUID]) -> list[ReleasedClaim]:
    """Delete every claim of ``session_ids``; returns them."""
    return released(
        await conn.fetch(
            """DELETE FROM session_claims WHERE session_id = ANY($1::uuid[])
               RETURNING session_id, key, upload_id, uploader""",
            list(session_ids),
        )
    )


async def close_sessions(conn: Connection, session_ids: Sequence[uuid.UUID], state: str) -> list[ReleasedClaim]:
    """Give the open sessions among ``session_ids`` the closed ``state`` (``aborted``) and release the claims
    of all of them; returns the released claims. Call inside a transaction."""
    await conn.execute(
        "UPDATE upload_sessions SET state = $2 WHERE id = ANY($1::uuid[]) AND state = 'open'",
        list(session_ids),
        state,
    )
    return await release_claims(conn, session_ids)


async def complete_session(conn: Connection, session_id: uuid.UUID, result: dict[str, Any]) -> None:
    """Record a published session's answer and release its claims, in one statement (in publication's
    transaction, which holds the session's row)."""
    await conn.execute(
        """WITH released AS (DELETE FROM session_claims WHERE session_id = $1)
           UPDATE upload_sessions SET state = 'completed', completed_at = now(), result = $2 WHERE id = $1""",
        session_id,
        result,
    )


async def expire_due(conn: Connection, now: datetime) -> tuple[list[uuid.UUID], list[ReleasedClaim]]:
    """Mark open sessions past their expiry ``expired`` (taking their rows' locks, so a ``complete`` that is
    publishing one wins) and release their claims; returns their ids and the released claims."""
    rows = await conn.fetch(
        "UPDATE upload_sessions SET state = 'expired' WHERE state = 'open' AND expires_at <= $1 RETURNING id", now
    )
    ids = [r["id"] for r in rows]
    return ids, await release_claims(conn, ids)


async def forget_closed(conn: Connection, before: datetime) -> int:
    """Delete the rows of sessions that closed before ``before``; returns how many."""
    status: str = await conn.execute(
        """DELETE FROM upload_sessions
           WHERE state IN ('completed', 'aborted', 'expired')
             AND greatest(expires_at, coalesce(completed_at, expires_at)) < $1""",
        before,
    )
    return int(status.rsplit(" ", 1)[-1])


async def count_due(conn: Connection, now: datetime) -> int:
    """How many open sessions are past their expiry (a dry run's count)."""
    return int(
        await conn.fetchval("SELECT count(*) FROM upload_sessions WHERE state = 'open' AND expires_at <= $1", now)
    )
