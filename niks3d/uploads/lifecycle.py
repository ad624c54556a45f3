"""Looking at and aborting upload sessions."""

from __future__ import annotations

__all__ = ["abort_session", "get_session", "session_status"]

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from niks3d.db import uploads as db
from niks3d.errors import ApiError
from niks3d.uploads.context import PushContext
from niks3d.uploads.multipart import abort_uploads

logger = logging.getLogger(__name__)


async def get_session(ctx: PushContext, session_id: uuid.UUID) -> db.SessionRow:
    async with ctx.pool.acquire() as conn:
        session = await db.load_session(conn, session_id)
    if session is None:
        raise ApiError(404, "session_not_found", f"no upload session {session_id}")
    return session


def session_status(session: db.SessionRow) -> dict[str, Any]:
    state = "expired" if session.is_expired(datetime.now(UTC)) else session.state
    return {
        "session_id": str(session.id),
        "state": state,
        "created_at": session.created_at.isoformat(),
        "expires_at": session.expires_at.isoformat(),
        "paths": len(session.request.get("paths", [])),
        "result": session.result,
    }


async def abort_session(ctx: PushContext, session_id: uuid.UUID) -> dict[str, Any]:
    """Abort: release the claims and abort this session's multipart uploads. Repeating it is harmless."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        session = await db.load_session(conn, session_id, for_update=True)
        if session is None:
            raise ApiError(404, "session_not_found", f"no upload session {session_id}")
        if session.state == "completed":
            raise ApiError(409, "session_closed", f"session {session_id} is completed and cannot be aborted")
        uploads = await conn.fetch(
            "DELETE FROM session_claims WHERE session_id = $1 RETURNING key, upload_id", session_id
        )
        if session.state == "open":
            await conn.execute("UPDATE upload_sessions SET state = 'aborted' WHERE id = $1", session_id)
    await abort_uploads(ctx, [(r["key"], r["upload_id"]) for r in uploads if r["upload_id"]])
    logger.info(
        "session %s aborted",
        session_id,
        extra={"event": "session.aborted", "fields": {"session": str(session_id)}},
    )
    return {"session_id": str(session_id), "state": "aborted"}
