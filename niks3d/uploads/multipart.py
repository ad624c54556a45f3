"""The multipart uploads a session owns: created for large NARs it uploads (under its staging key), aborted when
it gives them up."""

from __future__ import annotations

__all__ = ["abort_uploads", "start_multipart_uploads"]

import logging
import uuid

from niks3d.db import uploads as db
from niks3d.nix.bucketkeys import staging_key
from niks3d.uploads.context import PushContext
from niks3d.uploads.objects import CONTENT_TYPES, wanted_objects

logger = logging.getLogger(__name__)


async def abort_uploads(ctx: PushContext, uploads: list[tuple[uuid.UUID, str, str]]) -> None:
    """Abort ``(session_id, key, upload_id)`` multipart uploads (they live under the session's staging key)."""
    for session_id, key, upload_id in uploads:
        try:
            await ctx.bucket.abort_multipart(staging_key(str(session_id), key), upload_id)
        except Exception:
            logger.warning("could not abort multipart upload %s of %s", upload_id, key, exc_info=True)


async def start_multipart_uploads(ctx: PushContext, session_id: uuid.UUID) -> None:
    """Create the multipart uploads of large NARs this session uploads and has none for yet."""
    s3 = ctx.settings.s3
    async with ctx.pool.acquire() as conn:
        session = await db.load_session(conn, session_id)
        assert session is not None
        claims = await db.claims_of_session(conn, session_id)
        states = await db.object_states(conn, list(claims))
    req = ctx.requests.get(session.id, session.request)
    sizes = {o.key: o.nar_size for p in req.paths for o in wanted_objects(p, published=False) if o.kind == "nar"}
    for key, claim in sorted(claims.items()):
        if (
            claim.uploader
            and claim.upload_id is None
            and sizes.get(key, 0) >= s3.multipart_threshold
            and states.get(key, ("pending",))[0] == "pending"
        ):
            staged = staging_key(str(session_id), key)
            upload_id = await ctx.bucket.create_multipart(staged, content_type=CONTENT_TYPES["nar"][0])
            async with ctx.pool.acquire() as conn:
                await db.set_upload_id(conn, session_id, key, upload_id)
