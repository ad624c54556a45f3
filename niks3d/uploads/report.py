"""Object reports: the client says what it uploaded; niks3d checks it and puts it in place.

Clients upload to the session's staging key (``staging/<session>/<key>``), never to the key the object is
published under (docs/security.md, rule 2). For every reported key this session uploads: a multipart upload
is finished first, the staged object must exist with exactly the reported size, then niks3d copies it into
place server-side and checks the copy (which nobody but niks3d can write): a NAR must decompress to the
declared NarHash and NarSize under Nix's parser rules, unless the session's token is trusted and
``s3.verify = "size"`` (rule 1). Only then is the object recorded as present, with its FileHash, and the
staged object deleted. A NAR that fails its check is deleted from its published key again, and its session is
aborted (422 ``objects_invalid``): a writer that lied about one object is trusted with none.
"""

from __future__ import annotations

__all__ = ["report_objects"]

import asyncio
import logging
from typing import Any

from niks3d.db import uploads as db
from niks3d.db.sessions import ReleasedClaim
from niks3d.errors import InvalidRequest, InvalidUpload, ObjectNotFound, StorageError, StorageThrottled
from niks3d.nix.bucketkeys import nar_key, parse_bucket_key, staging_key
from niks3d.nix.hashes import format_sha256
from niks3d.nix.storepath import StorePath
from niks3d.storage.errors import UploadNotFound
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.leases import LeaseKeeper
from niks3d.uploads.lifecycle import abort_session
from niks3d.uploads.multipart import start_multipart_uploads
from niks3d.uploads.objects import CONTENT_TYPES
from niks3d.uploads.request import ObjectReport, SessionRequest
from niks3d.uploads.verify import verify_nar_object

logger = logging.getLogger(__name__)
_CONCURRENCY = 32


def _nar_expectations(req: SessionRequest) -> dict[str, tuple[bytes, int, StorePath]]:
    return {nar_key(p.nar_hash, "zstd"): (p.nar_hash, p.nar_size, p.path) for p in req.paths}


async def report_objects(
    ctx: PushContext, session: db.SessionRow, reports: dict[str, ObjectReport], *, trusted: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """Check and record reported objects; returns (accepted keys, missing [{key, reason}])."""
    if not reports:
        return [], []
    req = ctx.requests.get(session.id, session.request)
    expected_nars = _nar_expectations(req)
    async with ctx.pool.acquire() as conn:
        claims = await db.claims_of_session(conn, session.id)
        states = await db.object_states(conn, list(reports))
        await db.touch_session(conn, session.id, ctx.settings.gc.session_expiry)
    accepted: list[str] = []
    missing: list[dict[str, Any]] = []
    to_check: list[tuple[ObjectReport, db.Claim]] = []
    superseded: list[db.Claim] = []
    for key, report in sorted(reports.items()):
        claim = claims.get(key)
        if claim is None:
            raise InvalidRequest(f"objects: {key!r} is not an object of this session")
        if states.get(key, ("pending",))[0] == "present":
            accepted.append(key)
            superseded.append(claim)  # another session's upload may have been verified first: drop this one's copy
        elif not claim.uploader:
            missing.append({"key": key, "reason": "another session is uploading this object"})
        else:
            to_check.append((report, claim))

    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def check(report: ObjectReport, claim: db.Claim) -> tuple[str, int, str | None] | dict[str, Any]:
        async with semaphore:
            nar = expected_nars.get(report.key)
            return await _check_one(ctx, session, report, claim, nar, full=full, keeper=keeper)

    full = ctx.settings.s3.verify == "full" or not trusted

    async with LeaseKeeper(ctx, session.id) as keeper:
        results = await asyncio.gather(*(check(r, c) for r, c in to_check))
    if superseded:
        # this session's copies are not needed: gone, under uploads/closing.py's policy for S3 failures
        dropped = [ReleasedClaim(session.id, c.key, c.upload_id, True) for c in superseded]
        await tidy_released(ctx.bucket, dropped, delete_staged=True)
    good = [r for r in results if isinstance(r, tuple)]
    failed = [r for r in results if isinstance(r, dict)]
    invalid = [r for r in failed if r.pop("invalid", False)]
    if invalid:
        # The upload is not what the session declared: a hostile or broken writer. Its session ends here, so
        # its claims stop holding up other sessions that need the same objects (docs/security.md, rule 1).
        await abort_session(ctx, session.id)
        shown = "; ".join(f"{r['key']}: {r['reason']}" for r in invalid[:3])
        raise InvalidUpload(
            f"{len(invalid)} uploaded object(s) are not what this session declared, so it was aborted: {shown}",
            invalid=[{"key": r["key"], "reason": r["reason"]} for r in invalid],
        )
    reset = [r["key"] for r in failed if r.pop("reset", False)]
    missing.extend(failed)
    if reset:
        async with ctx.pool.acquire() as conn:
            await db.clear_upload_ids(conn, session.id, reset)
        await start_multipart_uploads(ctx, session.id)
    if good:
        async with ctx.pool.acquire() as conn, conn.transaction():
            # Reports of one session (a retry, or one through another daemon) record in turn: without that, two
            # of them lock the same object and claim rows in different orders and deadlock.
            await db.load_session(conn, session.id, for_update=True)
            await db.mark_present(conn, good)
            await db.clear_upload_ids(conn, session.id, [key for key, _, _ in good])
            # Accepted objects are upload progress: the session keeps the uploads it still has to do.
            await db.renew_leases(conn, session.id, ctx.settings.gc.claim_lease)
        accepted.extend(k for k, _, _ in good)
        await ctx.bucket.delete_many([staging_key(str(session.id), k) for k, _, _ in good])
    for item in missing:
        logger.info("session %s: object %s not accepted: %s", session.id, item["key"], item["reason"])
    return sorted(accepted), missing


async def _check_one(
    ctx: PushContext,
    session: db.SessionRow,
    report: ObjectReport,
    claim: db.Claim,
    nar: tuple[bytes, int, StorePath] | None,
    *,
    full: bool,
    keeper: LeaseKeeper,
) -> tuple[str, int, str | None] | dict[str, Any]:
    key = report.key
    staged = staging_key(str(session.id), key)
    if claim.upload_id is not None:
        try:
            await ctx.bucket.complete_multipart(staged, claim.upload_id)
        except UploadNotFound:
            return {"key": key, "reason": "the multipart upload is gone; upload the object again", "reset": True}
        except StorageThrottled:
            raise
        except StorageError as exc:
            return {"key": key, "reason": f"the multipart upload cannot be completed: {exc}"}
    # a completed multipart upload is consumed: a new one is needed for the next attempt
    reset = claim.upload_id is not None
    info = await ctx.bucket.head(staged)
    if info is None:
        return {"key": key, "reason": "not found in the bucket", "reset": reset}
    if info.size != report.file_size:
        return {
            "key": key,
            "reason": f"size mismatch: reported {report.file_size} bytes, the bucket has {info.size}",
            "reset": reset,
        }
    # The staged object is there: that is progress. The lease is renewed, and kept renewed while the copy and
    # its check run, unless another session took the upload over meanwhile (uploads/leases.py).
    async with ctx.pool.acquire() as conn:
        if not await db.renew_leases(conn, session.id, ctx.settings.gc.claim_lease, [key]):
            return {"key": key, "reason": "another session took this upload over (this session's lease ran out)"}
    keeper.start()
    kind = parse_bucket_key(key).kind
    content_type, content_encoding = CONTENT_TYPES[kind]
    try:
        await ctx.bucket.copy(
            staged,
            key,
            size=info.size,
            content_type=content_type,
            content_encoding=content_encoding,
            part_size=ctx.settings.s3.multipart_part_size,
        )
    except ObjectNotFound:
        # Another report of the same object (a retried request, or one through another daemon) accepted it and
        # deleted the staged copy between our HEAD and our copy: take its verdict.
        async with ctx.pool.acquire() as conn:
            state, size, stored_hash = (await db.object_states(conn, [key])).get(key, ("pending", None, None))
        if state == "present" and size is not None:
            return key, size, stored_hash
        return {"key": key, "reason": "the staged object went away while it was checked; upload it again"}
    file_hash = format_sha256(report.file_hash) if report.file_hash is not None else None
    if nar is not None and full:
        async with ctx.verify_slots:
            problem = await verify_nar_object(ctx.bucket, key, report, nar_hash=nar[0], nar_size=nar[1])
        if problem:
            await ctx.bucket.delete_many([key])
            return {"key": key, "reason": problem, "reset": reset, "invalid": True}
    return key, info.size, file_hash
