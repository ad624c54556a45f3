"""Object reports: the client says what it uploaded; niks3d checks it and puts it in place.

Clients upload to the session's staging key (``staging/<session>/<key>``), never to the key the object is
published under (docs/security.md, rule 2). For every reported key this session uploads: a multipart upload
is finished first, the staged object must exist with exactly the reported size, then niks3d copies it into
place server-side and checks the copy (which nobody but niks3d can write): a NAR must decompress to the
declared NarHash and NarSize under Nix's parser rules, unless the session's token is trusted and
``s3.verify = "size"`` (rule 1). Only then is the object recorded as present, with its FileHash, and the
staged object deleted. A NAR that fails its check is deleted from its published key again, and its session is
aborted (422 ``objects_invalid``): a writer that lied about one object is trusted with none.

What a report costs does not grow with the number of objects on the database side: the objects are checked in
S3 (complete the multipart upload, HEAD the staged object) with bounded concurrency, then every lease of the
session is renewed in one statement (staged objects found are progress), then they are copied and checked, then
recorded in one transaction. The push API asks for no listing (niks3d writes each one from its NAR:
uploads/listing.py); a listing reported by a session that an older niks3d opened is only parsed, never copied
into place. No check of
one object takes a pool connection of its own: a report of thousands of objects took one each, and with the
pool's ``acquire_timeout`` running out for any one of them on a loaded machine, every report failed with 503 and
was sent again with more objects (issue 18). When one check fails, the others are cancelled rather than left
running on to compete with the report sent next.
"""

from __future__ import annotations

__all__ = ["BEING_PLACED", "report_objects"]

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from asyncpg import Connection

from niks3d.db import logs as db_logs
from niks3d.db import uploads as db
from niks3d.db.sessions import ReleasedClaim
from niks3d.errors import InvalidRequest, InvalidUpload, ObjectNotFound, StorageError, StorageThrottled
from niks3d.nix.bucketkeys import parse_bucket_key, staging_key
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import parse_listing
from niks3d.storage.errors import UploadNotFound
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.leases import LeaseKeeper
from niks3d.uploads.lifecycle import abort_session
from niks3d.uploads.logbinding import unbound_logs
from niks3d.uploads.multipart import start_multipart_uploads
from niks3d.uploads.objects import CONTENT_TYPES
from niks3d.uploads.request import ObjectReport, PathRequest
from niks3d.uploads.verify import verify_nar_object

logger = logging.getLogger(__name__)
_CONCURRENCY = 32
_NOT_UPLOADED = "niks3d writes the listing itself, from the path's NAR (docs/security.md, rule 8): it is not uploaded"
# Why a staged object was not taken: another session's upload of the key is being copied into place and checked.
# Not a missing upload: ``complete`` answers 409 ``objects_pending`` for it (uploads/publish.py).
BEING_PLACED = "another session's upload of this object is being checked"
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class _Staged:
    """A reported object whose staged copy is there with the reported size."""

    report: ObjectReport
    size: int
    reset: bool  # its multipart upload was completed: a retry needs a new one


@dataclass(frozen=True, slots=True)
class _Gone:
    """The staged object went away between the HEAD and the copy (another report of it may have accepted it)."""

    key: str


Failure = dict[str, Any]
Accepted = tuple[str, int, str | None]


async def _each(items: Sequence[_T], check: Callable[[_T], Awaitable[_R]]) -> list[_R]:
    """``check`` of every item, at most ``_CONCURRENCY`` at a time; the first exception cancels the rest and is
    raised once they have stopped."""
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def one(item: _T) -> _R:
        async with semaphore:
            return await check(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def report_objects(
    ctx: PushContext, session: db.SessionRow, reports: dict[str, ObjectReport], *, trusted: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """Check and record reported objects; returns (accepted keys, missing [{key, reason}])."""
    if not reports:
        return [], []
    req = await ctx.request_of(session.id)
    expected_nars = req.plan.nars
    lease = ctx.settings.gc.claim_lease
    async with ctx.pool.acquire() as conn:
        view = await db.report_view(conn, session.id, list(reports), ctx.settings.gc.session_expiry)
    accepted: list[str] = []
    missing: list[dict[str, Any]] = []
    to_check: list[tuple[ObjectReport, db.Claim]] = []
    superseded: list[db.Claim] = []
    for key, report in sorted(reports.items()):
        if key not in view:
            raise InvalidRequest(f"objects: {key!r} is not an object of this session")
        claim, state = view[key]
        if state == "present":
            accepted.append(key)
            superseded.append(claim)  # another session's upload may have been verified first: drop this one's copy
        elif parse_bucket_key(key).kind == "ls" and not claim.uploader:
            # The push API asks for no listing: niks3d derives it from the NAR at publication (rule 8). Only a
            # session opened by an older niks3d, which asked for the upload, still has one to check.
            missing.append({"key": key, "reason": _NOT_UPLOADED})
        elif not claim.uploader:
            missing.append({"key": key, "reason": "another session is uploading this object"})
        else:
            to_check.append((report, claim))

    claims = {report.key: claim for report, claim in to_check}
    full = ctx.settings.s3.verify == "full" or not trusted
    staged = await _each(to_check, lambda item: _stage(ctx, session, *item))
    failed = [r for r in staged if isinstance(r, dict)]
    ready = [r for r in staged if isinstance(r, _Staged)]
    if ready:
        # The staged objects are there: that is progress. The session's leases are renewed, all of them in one
        # statement (the report's only renewal, however many objects it carries), and kept renewed while the
        # copies and their checks run; an upload another session took over meanwhile is not this one's any more
        # (uploads/leases.py).
        # Then the NARs' placements are taken, on the same connection (one statement more a report).
        async with ctx.pool.acquire() as conn:
            still = await db.renew_leases(conn, session.id, lease, [r.report.key for r in ready])
            failed.extend(
                {"key": r.report.key, "reason": "another session took this upload over (this session's lease ran out)"}
                for r in ready
                if r.report.key not in still
            )
            ready, waiting, late = await _begin_placing(ctx, conn, session, [r for r in ready if r.report.key in still])
        failed.extend(waiting)
        accepted.extend(late)
        superseded.extend(claims[k] for k in late)
    async with LeaseKeeper(ctx, session.id) as keeper:
        if ready:
            keeper.start()
        logs = [r for r in ready if parse_bucket_key(r.report.key).kind == "log"]
        others = [r for r in ready if parse_bucket_key(r.report.key).kind != "log"]
        placed = await _each(others, lambda r: _place(ctx, session, r, expected_nars.get(r.report.key), full=full))
        placed += await _place_logs(ctx, session, logs, req.plan.log_bindings)
    good = [r for r in placed if isinstance(r, tuple)]
    failed.extend(r for r in placed if isinstance(r, dict))
    if gone := [r.key for r in placed if isinstance(r, _Gone)]:
        # Another report of the same object (a retried request, or one through another daemon) accepted it and
        # deleted the staged copy between our HEAD and our copy: take its verdict.
        async with ctx.pool.acquire() as conn:
            now = await db.object_states(conn, gone, proven_writer=True)
        for key in gone:
            state, size, stored_hash = now.get(key, ("pending", None, None))
            if state == "present" and size is not None:
                good.append((key, size, stored_hash))
            else:
                failed.append(
                    {"key": key, "reason": "the staged object went away while it was checked; upload it again"}
                )
    if superseded:
        # this session's copies are not needed: gone, under uploads/closing.py's policy for S3 failures
        dropped = [ReleasedClaim(session.id, c.key, c.upload_id, True) for c in superseded]
        await tidy_released(ctx.bucket, dropped, delete_staged=True)
    invalid = [r for r in failed if r.pop("invalid", False)]
    if invalid:
        # The upload is not what the session declared: a hostile or broken writer. Its session ends here, so
        # its claims stop holding up other sessions that need the same objects, its other placements end (every
        # check of this report is over), and its identity does not place these keys again for a while
        # (docs/security.md, rule 1).
        async with ctx.pool.acquire() as conn, conn.transaction():
            await db.end_placing(conn, session.id)
            await db.record_failed_check(conn, session.id, [r["key"] for r in invalid])
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
        async with ctx.pool.acquire() as conn:
            # one statement, which holds the session's row: reports of one session record in turn
            recorded = await db.record_accepted(conn, session.id, good)
            # A NAR is recorded only by its placer: one not recorded was placed by another session meanwhile
            # (this one's placement ran out), or is still being placed by it.
            lost = [k for k, _, _ in good if k not in recorded]
            now = await db.object_states(conn, lost) if lost else {}
        for key in lost:
            if now.get(key, ("pending",))[0] != "present":
                missing.append({"key": key, "reason": BEING_PLACED})
        accepted.extend(k for k, _, _ in good if k in recorded or now.get(k, ("pending",))[0] == "present")
        await ctx.bucket.delete_many([staging_key(str(session.id), k) for k, _, _ in good])
    for item in missing:
        logger.info("session %s: object %s not accepted: %s", session.id, item["key"], item["reason"])
    return sorted(accepted), missing


async def _stage(ctx: PushContext, session: db.SessionRow, report: ObjectReport, claim: db.Claim) -> _Staged | Failure:
    """Finish the object's multipart upload, if it has one, and find its staged copy with the reported size."""
    key = report.key
    staged = staging_key(str(session.id), key)
    if claim.upload_id is not None:
        try:
            await ctx.bucket.complete_multipart(staged, claim.upload_id)
        except UploadNotFound:
            # An earlier report completed it and then waited (another session's upload was being placed): the
            # staged object is there, checked below like any other.
            info = await ctx.bucket.head(staged)
            if info is None or info.size != report.file_size:
                return {"key": key, "reason": "the multipart upload is gone; upload the object again", "reset": True}
            return _Staged(report, info.size, True)
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
    return _Staged(report, info.size, reset)


async def _copy(ctx: PushContext, session: db.SessionRow, staged: _Staged) -> bool:
    """Copy the staged object to its key; False if the staged object is gone."""
    key = staged.report.key
    content_type, content_encoding = CONTENT_TYPES[parse_bucket_key(key).kind]
    try:
        await ctx.bucket.copy(
            staging_key(str(session.id), key),
            key,
            size=staged.size,
            content_type=content_type,
            content_encoding=content_encoding,
            part_size=ctx.settings.s3.multipart_part_size,
        )
    except ObjectNotFound:
        return False
    return True


async def _place_logs(
    ctx: PushContext,
    session: db.SessionRow,
    logs: list[_Staged],
    bindings: Mapping[str, tuple[tuple[str, str], ...]],
) -> list[Accepted | Failure | _Gone]:
    """Copy the staged build logs into place under their rows' locks, and mark them proven (a session uploads a
    log only with its proof: objects.py). A log that became proven meanwhile is kept, never replaced; one that
    is present without its proof is overwritten in place, so the key is never missing (db/logs.py). One pool
    connection for all of them, whatever their number (issue 18).

    The log of a floating content-addressed derivation counts only with its binding, the build-trace entry that
    names its path (uploads/drvproof.py): one published for another path refuses it. The log then stays as it
    is, and ``complete`` publishes the path without it (publish.py)."""
    if not logs:
        return []
    async with ctx.pool.acquire() as conn, conn.transaction():
        rows = await db_logs.lock_logs(conn, [r.report.key for r in logs])
        refused = await unbound_logs(conn, [r.report.key for r in logs], bindings)
        kept = [r for r in logs if r.report.key in rows and (rows[r.report.key].proven or r.report.key in refused)]
        todo = [r for r in logs if r not in kept and r.report.key not in refused]
        copied = await _each(todo, lambda r: _copy(ctx, session, r))
        placed: list[Accepted | Failure | _Gone] = [
            (r.report.key, r.size, format_sha256(r.report.file_hash) if r.report.file_hash is not None else None)
            for r, ok in zip(todo, copied, strict=True)
            if ok
        ]
        await db_logs.mark_proven(conn, [p for p in placed if isinstance(p, tuple)])
    placed += [_Gone(r.report.key) for r, ok in zip(todo, copied, strict=True) if not ok]
    # A proven log was there first (or this one is refused): this session's copy is not needed, and the kept log
    # is what it publishes.
    placed += [(r.report.key, rows[r.report.key].size or 0, rows[r.report.key].file_hash) for r in kept]
    placed += [
        {"key": r.report.key, "reason": refused[r.report.key]}
        for r in logs
        if r.report.key in refused and r not in kept
    ]
    return placed


async def _place(
    ctx: PushContext,
    session: db.SessionRow,
    staged: _Staged,
    nar: PathRequest | None,
    *,
    full: bool,
) -> Accepted | Failure | _Gone:
    """Copy the staged object to its key and, for a NAR under full verification, check the copy."""
    report = staged.report
    key = report.key
    if parse_bucket_key(key).kind == "ls":
        return await _check_listing(ctx, session, staged)
    if not await _copy(ctx, session, staged):
        async with ctx.pool.acquire() as conn:
            await db.end_placing(conn, session.id, [key])  # nothing was copied
        return _Gone(key)
    file_hash = format_sha256(report.file_hash) if report.file_hash is not None else None
    if nar is not None and full:
        async with ctx.verify_slots:
            problem = await verify_nar_object(
                ctx.bucket, key, report, nar_hash=nar.nar_hash, nar_size=nar.nar_size, listings=ctx.listings
            )
        if problem:
            # Deleted only while this is still its placement (under the row's lock): another session's upload
            # that was put in place since is never touched.
            async with ctx.pool.acquire() as conn, conn.transaction():
                if await db.end_placing(conn, session.id, [key]):
                    await ctx.bucket.delete_many([key])
            return {"key": key, "reason": problem, "reset": staged.reset, "invalid": True}
    return key, staged.size, file_hash


async def _begin_placing(
    ctx: PushContext, conn: Connection, session: db.SessionRow, ready: list[_Staged]
) -> tuple[list[_Staged], list[Failure], list[str]]:
    """Take the placements of the ready NARs (one session at a time puts a key in place: db/uploads.py
    ``begin_placing``); returns what goes on (the NARs this session places and every other object), the NARs
    that must wait or may not be placed by it (failures), and those another upload was put in place for first."""
    nars = [r.report.key for r in ready if parse_bucket_key(r.report.key).kind == "nar"]
    if not nars:
        return ready, [], []
    gc = ctx.settings.gc
    mine = await db.begin_placing(conn, session.id, nars, gc.claim_lease, gc.claim_max_lease)
    others = [k for k in nars if k not in mine]
    why = await db.placing_obstacles(conn, session.id, others, gc.claim_max_lease) if others else {}
    waiting: list[Failure] = []
    for key in others:
        if why.get(key) == "barred":
            waiting.append({"key": key, "reason": "an upload of this object by this identity failed its check lately"})
        elif why.get(key) != "present":
            waiting.append({"key": key, "reason": BEING_PLACED})
    late = [k for k in others if why.get(k) == "present"]
    return [r for r in ready if r.report.key not in others], waiting, late


async def _check_listing(ctx: PushContext, session: db.SessionRow, staged: _Staged) -> Accepted | Failure | _Gone:
    """A staged listing is parsed, never copied into place: niks3d writes ``<hash>.ls`` itself, from the path's
    NAR, when the path is published (uploads/listing.py, docs/security.md rule 8)."""
    key = staged.report.key
    limit = ctx.settings.server.max_body_bytes
    if staged.size > limit:
        return {"key": key, "reason": f"the listing is {staged.size} bytes, more than the limit of {limit}"}
    try:
        body = await ctx.bucket.get(staging_key(str(session.id), key))
    except ObjectNotFound:
        return _Gone(key)
    try:
        parse_listing(body)
    except NixFormatError as exc:
        return {"key": key, "reason": f"the listing is not valid: {exc}", "reset": staged.reset}
    return key, staged.size, None
