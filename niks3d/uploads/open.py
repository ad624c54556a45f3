"""Opening an upload session (``POST /api/v1/sessions``) and handing out upload URLs.

A session claims, in one transaction, every key it needs: the narinfo of every path of the push (so GC keeps
already-published references alive while the push runs) and, for paths not yet published, their NAR, listing,
log and realisations. Of the objects not yet in the bucket it becomes the uploader unless another live session
already is; only the uploader gets URLs, so a shared object is uploaded once.
"""

from __future__ import annotations

__all__ = ["build_response", "check_names", "open_session", "refresh_urls"]

import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from niks3d.db import paths as db_paths
from niks3d.db import uploads as db
from niks3d.db.retry import Conflict, retry_transaction
from niks3d.errors import InvalidRequest, MissingPrerequisite, StateConflict
from niks3d.eventloop import Pauser
from niks3d.logsetup import log_event
from niks3d.nix.bucketkeys import narinfo_key
from niks3d.nix.storepath import StorePath
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.leases import refresh_stalled
from niks3d.uploads.multipart import start_multipart_uploads
from niks3d.uploads.objects import WantedObject, object_spec, wanted_objects
from niks3d.uploads.request import SessionRequest
from niks3d.uploads.upstream import prove_upstream_async

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)


def outside_references(req: SessionRequest) -> set[str]:
    """Hash parts of references that are neither paths of the request nor named as upstream by it (they must be
    published already)."""
    in_request = {p.path.hash for p in req.paths} | {u.path.hash for u in req.upstream}
    return {r.hash for p in req.paths for r in p.references if r.hash not in in_request}


async def check_names(conn: asyncpg.Connection, req: SessionRequest) -> None:
    """409 when a path of the request, or a reference, has the hash part of a published path of another name.

    The cache keys everything by hash part (``<hash>.narinfo``), so ``<hash>-othername`` is not in the cache
    when ``<hash>-tricky`` is: answering "cached" would record a root for a path nobody can substitute
    (docs/security.md, rule 5).
    """
    wanted = {p.path.hash: p.path for p in req.paths}
    for p in req.paths:
        for r in p.references:
            wanted.setdefault(r.hash, r)
    names = await db_paths.published_names(conn, list(wanted))
    clashes = sorted((wanted[h].path, StorePath(h, name).path) for h, name in names.items() if name != wanted[h].name)
    if clashes:
        asked, held = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise StateConflict(
            f"{asked} is not in the cache: its hash part is taken by {held}{more}",
            code="path_conflict",
            conflicts=[{"path": a, "cached": c} for a, c in clashes],
        )


async def _check_references(ctx: PushContext, req: SessionRequest) -> None:
    # Upstream references first: a forged or mismatched proof is refused before anything is written.
    await prove_upstream_async(req.upstream, ctx.upstream_keys)
    in_request = {p.path.hash for p in req.paths} | {u.path.hash for u in req.upstream}
    outside = sorted({r.hash: r for p in req.paths for r in p.references if r.hash not in in_request}.items())
    if not outside:
        return
    async with ctx.pool.acquire() as conn:
        published = await db_paths.published_hashes(conn, [h for h, _ in outside])
    unknown = [r.path for h, r in outside if h not in published]
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise MissingPrerequisite(
            f"references are neither in this push nor in the cache nor named as upstream: {shown}",
            code="unknown_references",
            references=unknown,
        )


def session_objects(req: SessionRequest, published: set[str]) -> dict[str, list[WantedObject]]:
    """path hash -> the objects the session claims for it."""
    return {p.path.hash: wanted_objects(p, published=p.path.hash in published) for p in req.paths}


async def open_session(ctx: PushContext, req: SessionRequest, token_name: str) -> tuple[dict[str, Any], bool]:
    """Open (or, for a repeated idempotency key, find again) a session; returns (answer, created)."""
    await _check_references(ctx, req)
    digest = req.fingerprint()
    upload_keys = sorted({o.key for p in req.paths for o in wanted_objects(p, published=False) if o.client_uploads})
    gc = ctx.settings.gc

    async def attempt() -> tuple[uuid.UUID, bool]:
        # Multipart uploads of these keys whose lease ran out but that have made progress keep their uploader.
        await refresh_stalled(ctx, upload_keys, exclude=uuid.UUID(int=0))
        async with ctx.pool.acquire() as conn, conn.transaction():
            if req.idempotency_key is not None:
                existing = await db.find_session_by_key(conn, token_name, req.idempotency_key)
                if existing is not None:
                    if existing.request_digest != digest:
                        raise StateConflict(
                            f"idempotency_key {req.idempotency_key!r} was used for a different request",
                            code="idempotency_conflict",
                        )
                    # Only an open session is resumed; a push repeated after completion is a new push (its
                    # roots' last-push time must move forward).
                    if existing.state == "open" and not existing.is_expired(datetime.now(UTC)):
                        await db.touch_session(conn, existing.id, gc.session_expiry)
                        return existing.id, False
                    await db.clear_idempotency_key(conn, existing.id)
            session_id = await db.insert_session(
                conn,
                token_name=token_name,
                idempotency_key=req.idempotency_key,
                request=req.to_json(),
                request_digest=digest,
                expiry=gc.session_expiry,
            )
            await check_names(conn, req)
            published = await db_paths.published_hashes(conn, [p.path.hash for p in req.paths])
            wanted = {o.key: o for objs in session_objects(req, published).values() for o in objs}
            # The narinfos of references outside the push are claimed too: GC keeps them while the session runs.
            outside = sorted(outside_references(req))
            wanted.update({narinfo_key(h): WantedObject(narinfo_key(h), "narinfo", 0) for h in outside})
            keys = sorted(wanted)
            await db.ensure_objects(conn, [(k, wanted[k].kind) for k in keys])
            states = await db.lock_objects(conn, keys)
            if len(states) != len(keys):
                raise Conflict  # GC deleted a row between the two statements: decide again
            gone = set(outside) - await db_paths.published_hashes(conn, outside)
            if gone:
                raise MissingPrerequisite(
                    "references were deleted from the cache while this push opened: " + ", ".join(sorted(gone)[:10]),
                    code="unknown_references",
                    references=sorted(gone),
                )
            busy = await db.live_uploaders(conn, keys, exclude=session_id)
            stale = [k for k in keys if wanted[k].client_uploads and states[k] == "pending" and k not in busy]
            # A claim whose lease ran out blocks nobody: this session takes the upload over (uploads/leases.py).
            await db.insert_claims(conn, session_id, [(k, False) for k in keys])
            aborted = await db.take_over(conn, session_id, stale, gc.claim_lease)
        await tidy_released(ctx.bucket, aborted, delete_staged=False)
        return session_id, True

    session_id, created = await retry_transaction(attempt)
    await start_multipart_uploads(ctx, session_id)
    answer = await build_response(ctx, session_id)
    if created:
        log_event(
            logger,
            logging.INFO,
            "session.opened",
            "opened upload session %s for %d paths (%d roots)",
            session_id,
            len(req.paths),
            len(req.roots),
            session=str(session_id),
            paths=len(req.paths),
        )
    return answer, created


async def build_response(ctx: PushContext, session_id: uuid.UUID) -> dict[str, Any]:
    """The answer to ``POST /sessions``: per path, cached or the upload spec of each object."""
    async with ctx.pool.acquire() as conn:
        session = await db.load_session(conn, session_id)
        assert session is not None
        claims = await db.claims_of_session(conn, session_id)
        req = ctx.requests.get(session.id, session.request)
        published = await db_paths.published_hashes(conn, [p.path.hash for p in req.paths])
        states = await db.object_states(conn, list(claims))
    paths: list[dict[str, Any]] = []
    pause = Pauser()
    for p in req.paths:
        await pause()  # presigning 100,000 objects takes seconds: let other requests in between (issue 20)
        if p.path.hash in published:
            paths.append({"path": p.path.path, "status": "cached"})
            continue
        objects = []
        for obj in wanted_objects(p, published=False):
            claim = claims.get(obj.key)
            if not obj.client_uploads or claim is None:
                continue
            objects.append(
                await object_spec(
                    ctx.bucket,
                    ctx.settings.s3,
                    obj,
                    session_id=session.id,
                    state=states.get(obj.key, ("pending", None, None))[0],
                    uploader=claim.uploader,
                    upload_id=claim.upload_id,
                )
            )
        entry: dict[str, Any] = {"path": p.path.path, "status": "upload", "objects": objects}
        if p.log and p.log_refused:
            entry["log_refused"] = p.log_refused  # the log is not uploaded (docs/security.md, rule 3)
        paths.append(entry)
    return {"session_id": str(session.id), "expires_at": session.expires_at.isoformat(), "paths": paths}


async def refresh_urls(ctx: PushContext, session: db.SessionRow, wanted: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Fresh URLs (and more part URLs) for objects this session uploads."""
    req = ctx.requests.get(session.id, session.request)
    by_key = {o.key: o for p in req.paths for o in wanted_objects(p, published=False) if o.client_uploads}
    async with ctx.pool.acquire() as conn:
        claims = await db.claims_of_session(conn, session.id)
        states = await db.object_states(conn, list(wanted))
        await db.touch_session(conn, session.id, ctx.settings.gc.session_expiry)
    specs = []
    for key, parts in wanted.items():
        claim = claims.get(key)
        if claim is None or key not in by_key:
            raise InvalidRequest(f"objects: {key!r} is not an object of this session")
        if parts and claim.upload_id is None:
            raise InvalidRequest(f"objects: {key!r} is not a multipart upload; ask without parts")
        specs.append(
            await object_spec(
                ctx.bucket,
                ctx.settings.s3,
                by_key[key],
                session_id=session.id,
                state=states.get(key, ("pending", None, None))[0],
                uploader=claim.uploader,
                upload_id=claim.upload_id,
                parts=parts or None,
            )
        )
    return {"objects": specs}
