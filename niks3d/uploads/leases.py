"""Claims as short leases (docs/api.md, "Waiting for another session's upload").

One session of an identity at a time uploads a key; other sessions of the same identity that need it wait (``409
objects_pending``), but only while the uploader's lease runs (sessions of other identities upload it on their own,
and the first upload that passes its check is put in place: docs/security.md, rule 1): ``gc.claim_lease`` after it
became the uploader or last made progress. Progress is what shows bytes arriving, never a call: an object of the
session accepted, a staged object of the session being checked (renewed every third of a lease while the check
runs), or a multipart upload that has more whole parts than at its last renewal (counted with ListParts when another
session is about to take it over; a part smaller than the part size counts for nothing). No renewal moves a lease
past its cap, ``gc.claim_max_lease`` after the session became the uploader (``session_claims.lease_cap``), however
much progress it shows: a writer that sits on a claim and keeps feeding it holds other writers of the same object up
for that long at most. A session whose lease ran out loses the upload to the next session that needs the key; that
one uploads under its own staging key and is verified like any other (docs/security.md, rule 1).
"""

from __future__ import annotations

__all__ = ["LeaseKeeper", "refresh_stalled"]

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from types import TracebackType

from niks3d.db import pool as db_pool
from niks3d.db import uploads as db
from niks3d.errors import StorageError
from niks3d.nix.bucketkeys import staging_key
from niks3d.uploads.context import PushContext

logger = logging.getLogger(__name__)


async def refresh_stalled(ctx: PushContext, keys: Sequence[str], *, exclude: uuid.UUID, token_name: str) -> None:
    """Renew the leases of other sessions' multipart uploads of ``keys`` that ran out but have made progress
    (those of ``token_name``: only they could be taken over)."""
    if not keys:
        return
    lease = ctx.settings.gc.claim_lease
    part_size = ctx.settings.s3.multipart_part_size
    async with ctx.pool.acquire() as conn:
        stalled = await db.stalled_multipart(conn, keys, exclude=exclude, token_name=token_name)
    for upload in stalled:
        try:
            parts = await ctx.bucket.list_parts(staging_key(str(upload.session_id), upload.key), upload.upload_id)
        except StorageError:
            continue  # gone or unreadable: no progress to show
        # Only whole parts count: a writer that trickles bytes, or sends one small part after another, shows no
        # progress (every part but an upload's last is exactly the part size the session was given).
        uploaded = sum(p.size for p in parts if p.size is not None and p.size >= part_size)
        if uploaded > upload.progress:
            async with ctx.pool.acquire() as conn:
                if await db.record_progress(conn, upload, uploaded, lease):
                    await db.renew_leases(conn, upload.session_id, lease)  # the session is uploading: all of it
                    logger.debug(
                        "session %s: multipart upload of %s has %d bytes: lease renewed",
                        upload.session_id,
                        upload.key,
                        uploaded,
                    )


class LeaseKeeper:
    """Renews a session's leases, and its placements (db/uploads.py ``begin_placing``), every third of a lease
    while its staged objects are being copied into place and checked.

    ``start()`` is called once a staged object is known to be there (real bytes, not a call); the keeper stops
    on exit. A renewal that fails (the database is away) is logged and retried at the next tick: the check it
    covers goes on, and the lease it could not renew ends on time.
    """

    def __init__(self, ctx: PushContext, session_id: uuid.UUID) -> None:
        self._ctx = ctx
        self._session_id = session_id
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease-{self._session_id}")

    async def _run(self) -> None:
        lease = self._ctx.settings.gc.claim_lease
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                async with self._ctx.pool.acquire() as conn:
                    await db.renew_leases(conn, self._session_id, lease)
                    await db.renew_placing(conn, self._session_id, lease)
            except db_pool.UNAVAILABLE:
                logger.warning("session %s: could not renew its leases: the database is unavailable", self._session_id)

    async def __aenter__(self) -> LeaseKeeper:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
