"""Opening an upload session (``POST /api/v1/sessions``) and handing out upload URLs.

A session claims, in one transaction, every key it needs: the narinfo of every path of the push (so GC keeps
already-published references alive while the push runs) and, for paths not yet published, their NAR, listing,
log and realisations. Of the objects not yet in the bucket it becomes the uploader unless another live session
already is; only the uploader gets URLs, so a shared object is uploaded once.

A session all of whose paths are published claims nothing: the open completes it in the same transaction,
holding its paths' rows against GC's sweep meanwhile (docs/api.md).
"""

from __future__ import annotations

__all__ = ["PAGE_PATHS", "build_response", "check_names", "open_session", "refresh_urls"]

import asyncio
import logging
import uuid
from collections.abc import Container
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from niks3d.db import paths as db_paths
from niks3d.db import sessions as db_sessions
from niks3d.db import uploads as db
from niks3d.db.retry import Conflict, retry_transaction
from niks3d.errors import InvalidRequest, MissingPrerequisite, NotFound, StateConflict
from niks3d.eventloop import Pauser
from niks3d.logsetup import log_event
from niks3d.nix.bucketkeys import log_key, narinfo_key
from niks3d.nix.storepath import StorePath
from niks3d.sortpieces import sorted_in_pieces
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.leases import refresh_stalled
from niks3d.uploads.logbinding import unbound_logs
from niks3d.uploads.multipart import start_multipart_uploads
from niks3d.uploads.objects import WantedObject, object_spec
from niks3d.uploads.plan import ObjectPlan
from niks3d.uploads.request import PreparedSession, SessionRequest
from niks3d.uploads.upstream import prove_upstream_async

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)


# Paths per page of the answer: the first page comes with the session, the others from GET .../paths (docs/api.md).
# About 700 bytes of JSON and one presigned URL or more a path: a page is ~1 MiB and well under a second of work.
PAGE_PATHS = 1_000


async def check_names(conn: asyncpg.Connection, req: SessionRequest) -> set[str]:
    """409 when a path of the request, or a reference, has the hash part of a published path of another name;
    else the hash parts of the request's paths that are published (the same statement answers both).

    The cache keys everything by hash part (``<hash>.narinfo``), so ``<hash>-othername`` is not in the cache
    when ``<hash>-tricky`` is: answering "cached" would record a root for a path nobody can substitute
    (docs/security.md, rule 5).
    """
    published, _ = await check_names_and_logs(conn, req, None)
    return published


async def check_names_and_logs(
    conn: asyncpg.Connection, req: SessionRequest, identity: str | None
) -> tuple[set[str], set[str]]:
    """:func:`check_names`, and the published paths of the request whose log this push of ``identity`` replaces
    (the same statement answers all three): their log is in the cache without its proof, the push sends it with
    its proof, and ``identity`` published the path (or nobody knows who did: it was published before schema
    version 6). A path whose log is proven, or absent, costs nothing more (docs/security.md, rule 3)."""
    wanted = req.names
    logs = req.proven_logs if identity is not None else {}
    names, unproven = await db_paths.published_names_and_logs(conn, list(wanted), logs)
    clashes = sorted((wanted[h].path, StorePath(h, name).path) for h, name in names.items() if name != wanted[h].name)
    if clashes:
        asked, held = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise StateConflict(
            f"{asked} is not in the cache: its hash part is taken by {held}{more}",
            code="path_conflict",
            conflicts=[{"path": a, "cached": c} for a, c in clashes],
        )
    published = {h for h in names if h in req.hashes}
    return published, {h for h, by in unproven.items() if h in published and by in (identity, None)}


def cached_result(session_id: uuid.UUID, req: SessionRequest) -> dict[str, Any]:
    """The answer of ``complete`` for a session all of whose paths were published when it opened."""
    return {
        "session_id": str(session_id),
        "state": "completed",
        "published": [],
        "cached": [p.path.path for p in req.paths],
        "roots": [r.path for r in req.roots],
    }


def _claimed(plan: ObjectPlan, published: set[str], relog: set[str]) -> dict[str, WantedObject]:
    """key -> object of every key the session claims, given the paths of the request that are published (and
    those of them whose unproven log it replaces)."""
    wanted: dict[str, WantedObject] = {}
    for h, objs in plan.objects.items():
        if h not in published:
            wanted.update((o.key, o) for o in objs)
            continue
        wanted[objs[0].key] = objs[0]  # a published path: only its narinfo (objects[0]), and its log to replace
        if h in relog:
            wanted.update((o.key, o) for o in objs if o.kind == "log")
    # The narinfos of references outside the push are claimed too: GC keeps them while the session runs.
    for h, _ in plan.outside:
        key = narinfo_key(h)
        wanted[key] = WantedObject(key, "narinfo", 0)
    return dict(sorted_in_pieces(wanted.items()))  # in a worker thread: in pieces (niks3d/sortpieces.py)


def _claim_lists(
    plan: ObjectPlan, published: set[str], relog: set[str]
) -> tuple[dict[str, WantedObject], list[tuple[str, str]], list[str]]:
    """The session's claims (:func:`_claimed`), their (key, kind) rows, and the keys the client uploads."""
    wanted = _claimed(plan, published, relog)
    kinds = [(k, o.kind) for k, o in wanted.items()]
    return wanted, kinds, [k for k, o in wanted.items() if o.client_uploads]


def _stale_and_claims(
    client_keys: list[str], keys: list[str], states: dict[str, str], busy: Container[str]
) -> tuple[list[str], list[tuple[str, bool]]]:
    """The uploads nobody is doing (pending, no live uploader: this session takes them over) and the claim rows."""
    stale = [k for k in client_keys if states[k] == "pending" and k not in busy]
    return stale, [(k, False) for k in keys]


async def _check_references(ctx: PushContext, req: SessionRequest) -> None:
    # Upstream references first: a forged or mismatched proof is refused before anything is written.
    await prove_upstream_async(req.upstream, ctx.upstream_keys)
    if not req.outside:
        return
    async with ctx.pool.acquire() as conn:
        published = await db_paths.published_hashes(conn, [h for h, _ in req.outside])
    unknown = [r.path for h, r in req.outside if h not in published]
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise MissingPrerequisite(
            f"references are neither in this push nor in the cache nor named as upstream: {shown}",
            code="unknown_references",
            references=unknown,
        )


async def open_session(ctx: PushContext, prepared: PreparedSession, token_name: str) -> tuple[dict[str, Any], bool]:
    """Open (or, for a repeated idempotency key, find again) a session; returns (the answer's first page, created).

    Every step that is linear in the number of paths runs in a worker thread (parsing and encoding the request,
    and working out its object plan: server/sessions.py) or in batches of statements (db/batch.py), and the
    answer is paged.
    """
    req = prepared.request
    await _check_references(ctx, req)
    gc = ctx.settings.gc
    # A push of cached paths only never needs the object plan (uploads/plan.py): the open completes it. Whether
    # it is one is asked first, outside the transaction (which checks it again).
    async with ctx.pool.acquire() as conn:
        cached = await db_paths.published_hashes(conn, list(req.hashes)) == req.hashes

    async def attempt() -> tuple[uuid.UUID, bool, bool]:
        nonlocal cached
        if not cached:
            plan = await asyncio.to_thread(lambda: req.plan)  # seconds for 100,000 paths: off the event loop
            # Multipart uploads of these keys whose lease ran out but that have made progress keep their uploader.
            await refresh_stalled(ctx, list(plan.uploads), exclude=uuid.UUID(int=0), token_name=token_name)
        async with ctx.pool.acquire() as conn, conn.transaction():
            if req.idempotency_key is not None:
                existing = await db.find_session_by_key(conn, token_name, req.idempotency_key)
                if existing is not None:
                    if existing.request_digest != prepared.digest:
                        raise StateConflict(
                            f"idempotency_key {req.idempotency_key!r} was used for a different request",
                            code="idempotency_conflict",
                        )
                    # Only an open session is resumed; a push repeated after completion is a new push (its
                    # roots' last-push time must move forward).
                    if existing.state == "open" and not existing.is_expired(datetime.now(UTC)):
                        await db.touch_session(conn, existing.id, gc.session_expiry)
                        return existing.id, False, False
                    await db.clear_idempotency_key(conn, existing.id)
            session_id = await db.insert_session(
                conn,
                token_name=token_name,
                idempotency_key=req.idempotency_key,
                request=prepared.stored,
                request_digest=prepared.digest,
                expiry=gc.session_expiry,
            )
            published, relog = await check_names_and_logs(conn, req, token_name)
            if cached:
                # Nothing to upload: every path is published. Complete the session now, in this transaction,
                # instead of claiming every narinfo until the client's complete (docs/api.md).
                everything = [*req.hashes, *(h for h, _ in req.outside)]
                if (
                    published == req.hashes
                    and not relog
                    and await db_paths.lock_published(conn, everything) == set(everything)
                ):
                    await db_paths.touch_roots(conn, [r.hash for r in req.roots], session_id)
                    await db_sessions.complete_session(conn, session_id, cached_result(session_id, req))
                    return session_id, True, True
                # GC deleted some of them meanwhile (those are to be uploaded again), or the push replaces a log
                # (rule 3): again, with the plan
                cached = False
                raise Conflict("an all-cached push has something to upload after all")
            # The claims and the lists made of them, in a worker thread: for 100,000 paths each list is tens of
            # milliseconds of Python that would hold the event loop (issue 20).
            wanted, kinds, client_keys = await asyncio.to_thread(_claim_lists, req.plan, published, relog)
            outside = [h for h, _ in req.outside]
            keys = list(wanted)
            # A session claims a log only with its proof (objects.py): an unproven one is to be replaced (rule 3).
            # A row GC deleted meanwhile, or another session inserted meanwhile, is a Conflict: decide again.
            states = await db.ensure_and_lock(conn, kinds, proven_writer=True)
            gone = set(outside) - await db_paths.published_hashes(conn, outside)
            if gone:
                raise MissingPrerequisite(
                    "references were deleted from the cache while this push opened: " + ", ".join(sorted(gone)[:10]),
                    code="unknown_references",
                    references=sorted(gone),
                )
            busy = await db.live_uploaders(conn, keys, exclude=session_id, token_name=token_name)
            stale, claims = await asyncio.to_thread(_stale_and_claims, client_keys, keys, states, busy)
            # A claim whose lease ran out blocks nobody: this session takes the upload over (uploads/leases.py).
            await db.insert_claims(conn, session_id, claims)
            aborted = await db.take_over(conn, session_id, stale, gc.claim_lease, gc.claim_max_lease)
        await tidy_released(ctx.bucket, aborted, delete_staged=False)
        return session_id, True, False

    session_id, created, completed = await retry_transaction(attempt)
    if not completed:
        await asyncio.to_thread(lambda: req.plan)  # (a repeat of an open session opened with cached set)
    ctx.requests.put(session_id, req)  # parsed once: reports, pages and complete find it here
    if not completed:
        await start_multipart_uploads(ctx, session_id)
    answer = await build_response(ctx, session_id)
    if created:
        log_event(
            logger,
            logging.INFO,
            "session.opened",
            "opened upload session %s for %d paths (%d roots)%s",
            session_id,
            len(req.paths),
            len(req.roots),
            ": all cached, completed" if completed else "",
            session=str(session_id),
            paths=len(req.paths),
        )
    return answer, created


async def build_response(ctx: PushContext, session_id: uuid.UUID, start: int = 0) -> dict[str, Any]:
    """One page of the answer to ``POST /sessions`` (and ``GET .../paths``): the paths of the request from
    ``start`` on, at most :data:`PAGE_PATHS`, each cached or the upload spec of each object; ``next`` is where
    the next page starts, absent on the last one."""
    req = await ctx.request_of(session_id)
    if not 0 <= start < len(req.paths):
        raise InvalidRequest(f"start: {start} is not the index of a path of this session (0 to {len(req.paths) - 1})")
    page = req.paths[start : start + PAGE_PATHS]
    async with ctx.pool.acquire() as conn:
        session = await db.load_session(conn, session_id)
        if session is None:
            raise NotFound(f"no upload session {session_id}", code="session_not_found")
        # A completed session's paths are all published: no need of the plan (a push of cached paths has none)
        completed = session.state == "completed"
        uploaded = {p.path.hash: [] if completed else req.plan.client_uploads(p.path.hash) for p in page}
        keys = [o.key for objs in uploaded.values() for o in objs]
        claims = await db.claims_of_session(conn, session_id, keys)
        published = await db_paths.published_hashes(conn, list(uploaded))
        states = await db.object_states(conn, keys, proven_writer=True)
        # a CA log whose realisation is published for another path is not asked for (rule 3); no statement unless
        # the page has such logs
        unbound = await unbound_logs(conn, keys, req.plan.log_bindings)
    paths: list[dict[str, Any]] = []
    pause = Pauser()
    for p in page:
        await pause()  # presigning a page takes a fraction of a second: let other requests in between (issue 20)
        if p.path.hash in published:
            cached: dict[str, Any] = {"path": p.path.path, "status": "cached"}
            # a log this session replaces (rule 3): claimed at the open only for that
            relog = [o for o in uploaded[p.path.hash] if o.kind == "log" and (c := claims.get(o.key)) and c.uploader]
            if relog and relog[0].key not in unbound and states.get(relog[0].key, ("present",))[0] == "pending":
                cached["objects"] = [
                    await object_spec(
                        ctx.bucket,
                        ctx.settings.s3,
                        relog[0],
                        session_id=session.id,
                        state="pending",
                        uploader=True,
                        upload_id=None,
                    )
                ]
            paths.append(cached)
            continue
        objects = []
        for obj in uploaded[p.path.hash]:
            claim = claims.get(obj.key)
            if claim is None or obj.key in unbound:
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
        elif p.deriver is not None and (why := unbound.get(log_key(p.deriver.basename))):
            entry["log_refused"] = why
        paths.append(entry)
    answer: dict[str, Any] = {
        "session_id": str(session.id),
        "expires_at": session.expires_at.isoformat(),
        "paths": paths,
    }
    if session.state == "completed":
        answer["state"] = "completed"  # every path was cached when it opened: no complete is needed
    if start + PAGE_PATHS < len(req.paths):
        answer["next"] = start + PAGE_PATHS
    return answer


async def refresh_urls(ctx: PushContext, session: db.SessionRow, wanted: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Fresh URLs (and more part URLs) for objects this session uploads."""
    req = await ctx.request_of(session.id)
    by_key = req.plan.uploads
    async with ctx.pool.acquire() as conn:
        claims = await db.claims_of_session(conn, session.id)
        states = await db.object_states(conn, list(wanted), proven_writer=True)
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
