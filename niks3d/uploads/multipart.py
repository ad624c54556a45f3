"""The multipart uploads a session owns: created for large NARs it uploads (under its staging key). They are
aborted, when the session gives them up, by :mod:`niks3d.uploads.closing`."""

from __future__ import annotations

__all__ = ["start_multipart_uploads"]

import asyncio
import logging
import uuid

from niks3d.db import uploads as db
from niks3d.nix.bucketkeys import staging_key
from niks3d.uploads.context import PushContext
from niks3d.uploads.objects import CONTENT_TYPES

logger = logging.getLogger(__name__)


async def start_multipart_uploads(ctx: PushContext, session_id: uuid.UUID) -> None:
    """Create the multipart uploads of large NARs this session uploads and has none for yet."""
    req = await ctx.request_of(session_id)
    # A loop over every object the client uploads: in a worker thread, for a session of 100,000 paths (issue 20).
    large = await asyncio.to_thread(req.plan.large_nars, ctx.settings.s3.multipart_threshold)
    if not large:
        return
    async with ctx.pool.acquire() as conn:
        claims = await db.claims_of_session(conn, session_id, large)
        states = await db.object_states(conn, large)
    for key, claim in sorted(claims.items()):
        if claim.uploader and claim.upload_id is None and states.get(key, ("pending",))[0] == "pending":
            staged = staging_key(str(session_id), key)
            upload_id = await ctx.bucket.create_multipart(staged, content_type=CONTENT_TYPES["nar"][0])
            async with ctx.pool.acquire() as conn:
                await db.set_upload_id(conn, session_id, key, upload_id)
