"""Looking at and aborting upload sessions.

Aborting withdraws what an interrupted ``complete`` may have left visible: publication writes every narinfo of
the push (references first) before its database commit, so a daemon killed in between leaves narinfos that no
``store_paths`` row names. Abort deletes the narinfo of every path of the session that is not published,
referrers first, while it holds the rows' locks, so a concurrent publication of the same path waits and then
writes its own narinfo again (docs/security.md, rule 6).
"""

from __future__ import annotations

__all__ = ["abort_session", "get_session", "session_status"]

import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from niks3d.db import paths as db_paths
from niks3d.db import sessions as db_sessions
from niks3d.db import uploads as db
from niks3d.errors import InvalidRequest, NotFound, StateConflict
from niks3d.logsetup import log_event
from niks3d.nix.bucketkeys import narinfo_key
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.request import reference_levels

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)


async def get_session(ctx: PushContext, session_id: uuid.UUID) -> db.SessionRow:
    async with ctx.pool.acquire() as conn:
        session = await db.load_session(conn, session_id)
    if session is None:
        raise NotFound(f"no upload session {session_id}", code="session_not_found")
    return session


def session_status(session: db.SessionRow) -> dict[str, Any]:
    state = "expired" if session.is_expired(datetime.now(UTC)) else session.state
    return {
        "session_id": str(session.id),
        "state": state,
        "created_at": session.created_at.isoformat(),
        "expires_at": session.expires_at.isoformat(),
        "paths": session.paths,
        "result": session.result,
    }


async def abort_session(ctx: PushContext, session_id: uuid.UUID) -> dict[str, Any]:
    """Abort: release the claims and abort this session's multipart uploads. Repeating it is harmless."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        session = await db.load_session(conn, session_id, for_update=True)
        if session is None:
            raise NotFound(f"no upload session {session_id}", code="session_not_found")
        if session.state == "completed":
            raise StateConflict(f"session {session_id} is completed and cannot be aborted", code="session_closed")
        released = await db_sessions.close_sessions(conn, [session_id], "aborted")
        withdrawn = await _withdraw_narinfos(ctx, conn, session)
    # its client said it is done: what it staged goes now (uploads/closing.py's policy for S3 failures)
    await tidy_released(ctx.bucket, released, delete_staged=True)
    log_event(
        logger,
        logging.INFO,
        "session.aborted",
        "session %s aborted",
        session_id,
        session=str(session_id),
        narinfos_withdrawn=withdrawn,
    )
    return {"session_id": str(session_id), "state": "aborted"}


async def _withdraw_narinfos(ctx: PushContext, conn: asyncpg.Connection, session: db.SessionRow) -> int:
    """Delete the narinfos of the session's unpublished paths from the bucket, referrers first; returns how many
    paths that covered. Runs inside the abort's transaction: the narinfo rows stay locked until it commits."""
    req = await ctx.request_of(session.id)
    hashes = [p.path.hash for p in req.paths]
    await db.lock_objects(conn, sorted(narinfo_key(h) for h in hashes))
    published = await db_paths.published_hashes(conn, hashes)
    todo = [p for p in req.paths if p.path.hash not in published]
    try:
        levels = reference_levels(todo)
    except InvalidRequest:
        return 0  # a reference cycle: complete refused it before writing anything
    for group in reversed(levels):
        await ctx.bucket.delete_many([narinfo_key(p.path.hash) for p in group])
    return len(todo)
