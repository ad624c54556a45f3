"""Completing a session: check that every object is there, sign the narinfos, publish them references first,
and commit paths, references, files and roots in one transaction (docs/design.md, push protocol step 4). The
listings are niks3d's own, derived from the NARs (uploads/listing.py).

Nothing is published unless all of it can be: missing objects give a 422 with fresh upload specs, objects that
another live session is still uploading give a 409 with ``retry_after``. Narinfos are written while their rows
are locked, in topological order, so at every moment every narinfo in the bucket has its NAR and the narinfos of
all its references (invariant 1). A repeated ``complete`` of a completed session returns the stored answer.
"""

from __future__ import annotations

__all__ = ["complete_session"]

import asyncio
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from asyncpg import Connection

from niks3d.db import paths as db_paths
from niks3d.db import sessions as db_sessions
from niks3d.db import uploads as db
from niks3d.db import upstream as db_upstream
from niks3d.db.notify import notify_store_paths
from niks3d.db.retry import retry_transaction
from niks3d.db.sessions import ReleasedClaim
from niks3d.db.upstream import UpstreamRecord
from niks3d.errors import InvalidRequest, MissingPrerequisite, StateConflict
from niks3d.logsetup import log_event
from niks3d.nix.bucketkeys import ls_key, nar_key, narinfo_key, realisation_key, staging_key
from niks3d.nix.buildtrace import BuildTraceEntry
from niks3d.nix.hashes import format_sha256, parse_sha256
from niks3d.nix.narinfo import NarInfo
from niks3d.nix.realisation import Realisation
from niks3d.testhooks import pause_point
from niks3d.uploads.closing import tidy_released
from niks3d.uploads.context import PushContext
from niks3d.uploads.leases import refresh_stalled
from niks3d.uploads.listing import derive_listings, put_listings
from niks3d.uploads.logbinding import unbound_logs
from niks3d.uploads.multipart import start_multipart_uploads
from niks3d.uploads.objects import CONTENT_TYPES, WantedObject, build_trace_outputs, object_spec
from niks3d.uploads.open import check_names
from niks3d.uploads.report import BEING_PLACED, report_objects
from niks3d.uploads.request import ObjectReport, PathRequest, SessionRequest, reference_levels
from niks3d.uploads.upstream import prove_upstream_async

logger = logging.getLogger(__name__)
_PUT_CONCURRENCY = 32
PENDING_RETRY_AFTER = 2


def closed_error(session: db.SessionRow) -> StateConflict:
    state = "expired" if session.is_expired(datetime.now(UTC)) else session.state
    return StateConflict(f"session {session.id} is {state}; open a new one", code="session_closed")


async def complete_session(
    ctx: PushContext, session: db.SessionRow, reports: dict[str, ObjectReport], *, trusted: bool = False
) -> dict[str, Any]:
    """Complete ``session``, as the handler loaded it to check its owner (loaded once per ``complete``: the
    reports and the publication lock its row again, in their transactions, and see its current state there)."""
    session_id = session.id
    if session.state == "completed" and session.result is not None:
        return session.result
    if session.state != "open" or session.is_expired(datetime.now(UTC)):
        raise closed_error(session)
    try:
        _, failed = await report_objects(ctx, session, reports, trusted=trusted)
    except InvalidRequest:
        # The same complete through another daemon (or a retry) may have published the session since it was
        # loaded, releasing its claims: then its answer is this one's too.
        async with ctx.pool.acquire() as conn:
            now = await db.load_session(conn, session_id)
        if now is not None and now.state == "completed" and now.result is not None:
            return now.result
        raise
    req = await ctx.request_of(session.id)
    todo, states = await _check_objects(ctx, session, req, {m["key"]: m["reason"] for m in failed})
    if waited := [m["key"] for m in failed if m["reason"] == BEING_PLACED]:
        # Their report waited for another session's placement, which published them since: this session's
        # staged copies are not needed (GC's staging sweep would take them later).
        await ctx.bucket.delete_many([staging_key(str(session.id), k) for k in waited])
    # The listings are derived from the NARs before the publishing transaction, which must not hold its locks
    # while NARs are read (a listing uploaded meanwhile is derived in it).
    listings = await derive_listings(ctx, _nars_of([p for p in todo if _listed(p, states)]))
    result = await retry_transaction(lambda: _publish(ctx, session_id, req, listings))
    log_event(
        logger,
        logging.INFO,
        "session.completed",
        "session %s completed: %d published, %d already cached, %d roots",
        session_id,
        len(result["published"]),
        len(result["cached"]),
        len(result["roots"]),
        session=str(session_id),
        published=len(result["published"]),
    )
    return result


async def _check_objects(
    ctx: PushContext, session: db.SessionRow, req: SessionRequest, reasons: dict[str, str]
) -> tuple[list[PathRequest], dict[str, tuple[str, int | None, str | None]]]:
    """Raise 422/409 unless every object needed to publish the unpublished paths is present; else return those
    paths and the states of their objects (and of all their listings' keys, rule 8)."""
    async with ctx.pool.acquire() as conn:
        # every path's uploads and listing key: what publishing it needs if it is not published by now
        wanted = [
            (p.path.hash, k)
            for p in req.paths
            for k in {*(o.key for o in req.plan.client_uploads(p.path.hash)), req.plan.listings[p.path.hash]}
        ]
        published, states = await db.path_object_states(conn, wanted, proven_writer=True)
        todo = [p for p in req.paths if p.path.hash not in published]
        needed = {o.key: o for p in todo for o in req.plan.client_uploads(p.path.hash)}
        absent = [k for k in sorted(needed) if states.get(k, ("pending",))[0] != "present"]
        # A log whose realisation names another path is not this push's to publish (rule 3: uploads/logbinding.py).
        unbound = await unbound_logs(conn, absent, req.plan.log_bindings)
        absent = [k for k in absent if k not in unbound]
        if not absent:
            return todo, states  # every object is there: nothing to ask about claims or uploaders
        claims = await db.claims_of_session(conn, session.id)
    mine_now = {k for k in absent if claims.get(k) is not None and claims[k].uploader}
    # Another session's multipart upload that ran out of lease but has more bytes keeps it (uploads/leases.py).
    await refresh_stalled(
        ctx, [k for k in absent if k not in mine_now], exclude=session.id, token_name=session.token_name
    )
    async with ctx.pool.acquire() as conn:
        busy = await db.live_uploaders(conn, absent, exclude=session.id, token_name=session.token_name)
    # This session's report of these waited for another session's placement, which may have ended since: the
    # report is sent again with the next complete, so they are pending, not missing (no upload again).
    busy = {**busy, **{k: session.id for k in absent if reasons.get(k) == BEING_PLACED}}
    # An upload of this session waits while another session's upload of the key is being put in place (busy).
    mine = [k for k in absent if claims.get(k) is not None and claims[k].uploader and k not in busy]
    pending = [k for k in absent if k in busy]
    orphaned = [k for k in absent if k not in busy and k not in mine]
    if orphaned:
        # Their uploader went away: this session uploads them now.
        async def take() -> list[ReleasedClaim]:
            async with ctx.pool.acquire() as conn, conn.transaction():
                await db.ensure_and_lock(conn, [(k, needed[k].kind) for k in orphaned])
                await db.insert_claims(conn, session.id, [(k, False) for k in orphaned])
                # Another waiting session may have taken some over first (we waited on its row locks).
                busy_now = await db.live_uploaders(conn, orphaned, exclude=session.id, token_name=session.token_name)
                taken = [k for k in orphaned if k not in busy_now]
                gc = ctx.settings.gc
                return await db.take_over(conn, session.id, taken, gc.claim_lease, gc.claim_max_lease)

        # the previous uploader's session may still be open: its staged objects wait for GC's staging sweep
        await tidy_released(ctx.bucket, await retry_transaction(take), delete_staged=False)
        await start_multipart_uploads(ctx, session.id)
        async with ctx.pool.acquire() as conn:
            claims = await db.claims_of_session(conn, session.id)
        mine = [k for k in absent if k in claims and claims[k].uploader and k not in busy]
        pending = [k for k in absent if k not in mine]
    if mine:
        specs = [
            await object_spec(
                ctx.bucket,
                ctx.settings.s3,
                needed[k],
                session_id=session.id,
                state="pending",
                uploader=True,
                upload_id=claims[k].upload_id,
            )
            for k in sorted(mine)
        ]
        raise MissingPrerequisite(
            f"{len(mine)} object(s) of this session are not in the bucket: "
            + ", ".join(sorted(mine)[:5])
            + (" ..." if len(mine) > 5 else ""),
            code="objects_missing",
            missing=[{"key": k, "reason": reasons.get(k, "not uploaded or not reported")} for k in sorted(mine)],
            objects=specs,
            pending=pending,
        )
    if pending:
        raise StateConflict(
            f"{len(pending)} object(s) are still being uploaded by another session: " + ", ".join(pending[:5]),
            code="objects_pending",
            pending=pending,
            retry_after=PENDING_RETRY_AFTER,
        )
    return todo, states


def _listed(p: PathRequest, objects: dict[str, tuple[str, int | None, str | None]]) -> bool:
    """Whether ``p`` is published with a listing: it asked for one, or someone uploaded one for it (rule 8)."""
    return p.listing or objects.get(ls_key(p.path.hash), ("pending",))[0] == "present"


def _nars_of(paths: list[PathRequest]) -> dict[str, tuple[str, str]]:
    return {p.path.hash: (nar_key(p.nar_hash, "zstd"), "zstd") for p in paths}


async def _publish(
    ctx: PushContext, session_id: uuid.UUID, req: SessionRequest, listings: dict[str, bytes]
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn, conn.transaction():
        session = await db.load_session(conn, session_id, for_update=True)
        assert session is not None
        if session.state == "completed" and session.result is not None:
            return session.result
        if session.state != "open":
            raise closed_error(session)
        # The realisations' rows too (both layouts), in the same key order: two sessions never both write one
        # (rule 7); and the listings' rows: a stock PUT of <hash>.ls waits, then finds the path published (rule 8).
        await db.lock_objects(conn, req.plan.publication_locks)
        # a path of another name may have been published since the session opened
        published = await check_names(conn, req)
        todo = [p for p in req.paths if p.path.hash not in published]
        upstream = await _upstream_of(ctx, conn, req, todo)
        keys = [o.key for p in todo for o in req.plan.objects[p.path.hash]]
        objects = await db.object_states(conn, keys + [ls_key(p.path.hash) for p in todo])
        refused = await _refused_realisations(conn, todo, objects)
        listed = [p for p in todo if _listed(p, objects)]
        late = [p for p in listed if p.path.hash not in listings]  # a listing PUT since they were derived
        listings = {**listings, **await derive_listings(ctx, _nars_of(late))} if late else listings
        own = {p.path.hash: listings[p.path.hash] for p in listed if p.path.hash in listings}
        # What anyone put under the key of a path that gets no listing (its NAR does not parse) is not left there.
        await ctx.bucket.delete_many([ls_key(p.path.hash) for p in listed if p.path.hash not in own])
        listing_rows = await put_listings(ctx.bucket, [(ls_key(h), body) for h, body in sorted(own.items())])
        rows: list[db_paths.PublishedPath] = []
        for level, group in enumerate(reference_levels(todo)):
            if level:
                await pause_point("publish.level")  # tests/server/test_complete_outage.py
            rendered = [
                _render(ctx, p, req.plan.objects[p.path.hash], objects, upstream=upstream, refused=refused, own=own)
                for p in group
            ]
            await _put_all(ctx, [(r.narinfo_key, r.narinfo.encode(), "narinfo") for r in rendered])
            rows.extend(rendered)
        realisations = [
            (e.key, e.body(ctx), "realisation") for p in todo for e in _realisations_of(p) if e.key not in refused
        ]
        await _put_all(ctx, realisations)
        present: list[tuple[str, int, str | None]] = [(r.narinfo_key, len(r.narinfo.encode()), None) for r in rows]
        present += [(key, len(body), None) for key, body, _ in realisations]
        present += listing_rows
        await db.mark_present(conn, present)
        await db_paths.insert_published(conn, [replace(r, published_by=session.token_name) for r in rows])
        leaning = [(r.hash, u) for r in rows for u in r.upstream_references]
        await db_upstream.insert_records(conn, [upstream[h] for h in sorted({u for _, u in leaning})], leaning)
        await notify_store_paths(conn, published=[r.hash for r in rows])
        await db_paths.touch_roots(conn, [r.hash for r in req.roots], session_id)
        result: dict[str, Any] = {
            "session_id": str(session_id),
            "state": "completed",
            "published": [p.path.path for p in todo],
            "cached": [p.path.path for p in req.paths if p.path.hash in published],
            "roots": [r.path for r in req.roots],
        }
        if refused:
            result["realisations_refused"] = [refused[k] for k in sorted(refused)]
        if leaning:
            result["upstream"] = sorted({f"/nix/store/{upstream[u].hash}-{upstream[u].name}" for _, u in leaning})
        await db_sessions.complete_session(conn, session_id, result)
        return result


async def _upstream_of(
    ctx: PushContext, conn: Connection, req: SessionRequest, todo: list[PathRequest]
) -> dict[str, UpstreamRecord]:
    """The records of the upstream references the paths to publish lean on: those of the request's ``upstream``
    that are not published here by now (a path published here is referenced as such)."""
    outside = sorted({r.hash for p in todo for r in p.references if r.hash not in req.plan.objects})
    if not outside:
        return {}
    local = await db_paths.published_hashes(conn, outside)
    named = {u.path.hash: u for u in req.upstream}
    lost = [h for h in outside if h not in local and h not in named]
    if lost:
        # The session claimed their narinfos, so GC cannot have taken them; this is a defect, not a race.
        raise MissingPrerequisite(
            "references are neither in this push nor in the cache nor named as upstream: " + ", ".join(lost[:10]),
            code="unknown_references",
            references=lost,
        )
    return await prove_upstream_async([named[h] for h in outside if h not in local], ctx.upstream_keys)


async def _refused_realisations(
    conn: Connection, todo: list[PathRequest], objects: dict[str, tuple[str, int | None, str | None]]
) -> dict[str, dict[str, str]]:
    """The realisations of ``todo`` that are not published, by key, each with why (docs/security.md, rule 7).

    A realisation is immutable once published: one that exists (it names another output, since every path of
    ``todo`` is new) is kept as it is, and so is the first of two in this request with the same id. The paths
    are still published; only the realisation is refused, so a writer that got there first cannot make the
    victim's whole push fail.
    """
    wanted = [(e, p) for p in todo for e in _realisations_of(p)]
    taken = [e.key for e, _ in wanted if objects.get(e.key, ("pending",))[0] == "present"]
    holders = await db_paths.realisation_holders(conn, taken) if taken else {}
    refused: dict[str, dict[str, str]] = {}
    seen: dict[str, str] = {}
    for e, p in wanted:
        if e.key in taken:
            held = holders.get(e.key, "another output")
            reason = f"realisation {e.id} is already published for {held}; a published realisation is never changed"
        elif e.key in seen:
            held = seen[e.key]
            reason = f"realisation {e.id} is claimed twice in this push; kept the one for {held}"
        else:
            seen[e.key] = p.path.path
            continue
        refused.setdefault(e.key, {"id": e.id, "out_path": p.path.path, "published": held, "reason": reason})
    for item in refused.values():
        logger.warning("realisation refused: %s (asked for %s)", item["reason"], item["out_path"])
    return refused


def _render(
    ctx: PushContext,
    p: PathRequest,
    wanted: tuple[WantedObject, ...],
    objects: dict[str, tuple[str, int | None, str | None]],
    *,
    upstream: dict[str, UpstreamRecord],
    refused: dict[str, dict[str, str]],
    own: dict[str, bytes],
) -> db_paths.PublishedPath:
    """The published path ``p``, its narinfo signed; ``own``: the listings niks3d writes (by hash part)."""
    files: list[tuple[str, str]] = [(ls_key(p.path.hash), "ls")] if p.path.hash in own else []
    nar = None
    for obj in wanted:
        state, size, file_hash = objects.get(obj.key, ("pending", None, None))
        if obj.kind == "nar":
            nar = (obj.key, size, file_hash)
        elif (obj.kind == "log" and state == "present") or (obj.kind == "realisation" and obj.key not in refused):
            files.append((obj.key, obj.kind))
    assert nar is not None and nar[1] is not None and nar[2] is not None, f"NAR of {p.path} not verified"
    info = NarInfo(
        store_path=p.path,
        url=nar[0],
        compression="zstd",
        file_hash=parse_sha256(nar[2]),
        file_size=nar[1],
        nar_hash=p.nar_hash,
        nar_size=p.nar_size,
        references=tuple(r.basename for r in p.references),
        deriver=p.deriver.basename if p.deriver else None,
        system=None,
        sigs=(),
        ca=p.ca,
    ).signed(ctx.signing_keys)
    return db_paths.PublishedPath(
        hash=p.path.hash,
        name=p.path.name,
        nar_hash=format_sha256(p.nar_hash),
        nar_size=p.nar_size,
        nar_key=nar[0],
        narinfo_key=narinfo_key(p.path.hash),
        compression="zstd",
        file_hash=nar[2],
        file_size=nar[1],
        deriver=info.deriver,
        ca=p.ca,
        narinfo=info.render(),
        references=tuple(r.hash for r in p.references if r.hash not in upstream),
        upstream_references=tuple(r.hash for r in p.references if r.hash in upstream),
        files=tuple(files),
    )


@dataclass(frozen=True, slots=True)
class _Written:
    """A realisation the server writes for a pushed path: its key, its id as the answer names it, and its entry."""

    key: str
    id: str
    entry: Realisation | BuildTraceEntry

    def body(self, ctx: PushContext) -> bytes:
        return self.entry.signed(ctx.signing_keys).to_json().encode()


def _realisations_of(p: PathRequest) -> list[_Written]:
    """The path's realisations in both layouts (docs/protocol.md 4.4): each ``realisations/<id>.doi`` it sent,
    and the ``build-trace-v2/<drv>/<output>.doi`` entries of :func:`build_trace_outputs` (Nix 2.35 reads only
    these). Every one names ``p`` itself as its output (rule 7)."""
    written = [
        _Written(
            realisation_key(r.id),
            r.id,
            Realisation(
                id=r.id,
                out_path=p.path.basename,
                signatures=(),
                dependent_realisations=tuple(r.dependent_realisations),
            ),
        )
        for r in p.realisations
    ]
    written.extend(
        _Written(key, f"{drv}^{output}", BuildTraceEntry(drv, output, p.path.basename))
        for key, drv, output in build_trace_outputs(p)
    )
    return written


async def _put_all(ctx: PushContext, items: list[tuple[str, bytes, str]]) -> None:
    semaphore = asyncio.Semaphore(_PUT_CONCURRENCY)

    async def put(key: str, body: bytes, kind: str) -> None:
        async with semaphore:
            await ctx.bucket.put(key, body, content_type=CONTENT_TYPES[kind][0])

    await asyncio.gather(*(put(k, b, t) for k, b, t in items))
