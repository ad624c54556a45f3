"""The multipart uploads a session owns: created for large NARs it uploads (under its staging key). They are
aborted, when the session gives them up, by :mod:`niks3d.uploads.closing`."""

from __future__ import annotations

__all__ = ["start_multipart_uploads"]

import logging
import uuid

from niks3d.db import uploads as db
from niks3d.nix.bucketkeys import staging_key
from niks3d.uploads.context import PushContext
from niks3d.uploads.objects import CONTENT_TYPES, wanted_objects

logger = logging.getLogger(__name__)


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
