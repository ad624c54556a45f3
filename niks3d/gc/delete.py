"""Deleting one store path on request (``DELETE /api/v1/paths/{path}``): the "pushed a secret" case.

The request names a path; ``closure`` adds every path of its closure that nothing else keeps alive (no pushed
root within the retention window, no pin, no open session's claim reaches it once the named path is gone).
Without ``force`` a path that is pinned, referenced by another path, or claimed by an open upload session is
refused with the names of what holds it. With ``force`` the pins on it go, sessions that claim it are aborted,
and every path that references it (transitively) is deleted too, referrers first, since a narinfo must never
outlive a reference (design invariant 1).

Deletion uses the sweep's own batches (:mod:`niks3d.gc.sweep`) under the collector's lock, with no grace period:
the narinfos go first, then the NARs, listings, logs and realisations that no remaining path shares.
"""

from __future__ import annotations

__all__ = ["delete_path"]

import logging
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from asyncpg import Connection

from niks3d.db import paths as db_paths
from niks3d.db import sessions as db_sessions
from niks3d.db.gc import deletion as db
from niks3d.db.gc import mark
from niks3d.db.gc.runs import running_run, try_lock, unlock
from niks3d.errors import NotFound, StateConflict
from niks3d.gc import sweep
from niks3d.gc.collector import GcContext, refuse_after_unfinished_import
from niks3d.gc.runs import GcRunning
from niks3d.logsetup import log_event
from niks3d.uploads.closing import tidy_released

logger = logging.getLogger(__name__)

_SHOWN = 10


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


async def _targets(conn: Connection, hash_part: str, *, force: bool) -> list[str]:
    """The named path, and with ``force`` every path that references it, transitively."""
    return await db.referrers_closure(conn, hash_part) if force else [hash_part]


async def _holders(conn: Connection, hash_part: str, targets: list[str]) -> dict[str, list[str]]:
    """Pins on the targets, other paths that reference the named path, open sessions that claim a target."""
    return {
        "pins": await db.pin_names(conn, targets),
        "referrers": await db.referrer_paths(conn, hash_part),
        "sessions": await db.claiming_sessions(conn, targets),
    }


def _refusal(path: str, holders: dict[str, list[str]]) -> StateConflict:
    reasons = []
    if holders["pins"]:
        reasons.append(f"pinned as {_names(holders['pins'])}")
    if holders["referrers"]:
        reasons.append(f"referenced by {_names(holders['referrers'])}")
    if holders["sessions"]:
        reasons.append(f"claimed by open upload session(s) {_names(holders['sessions'])}")
    return StateConflict(
        f"{path} is {'; '.join(reasons)}; pass force=1 to delete it anyway (with every path that references it)",
        code="path_in_use",
        **holders,
    )


async def _release(conn: Connection, ctx: GcContext, targets: list[str], holders: dict[str, list[str]]) -> None:
    """With force: drop the pins on the targets and abort the sessions that claim them."""
    async with conn.transaction():
        await db.delete_pins(conn, targets)
        released = await db_sessions.close_sessions(conn, [uuid.UUID(s) for s in holders["sessions"]], "aborted")
    # their clients did not ask: what they staged waits for the staging sweep (uploads/closing.py's policy)
    await tidy_released(ctx.bucket, released, delete_staged=False)


async def _doomed(conn: Connection, targets: list[str], *, closure: bool, retention: datetime) -> None:
    """Fill ``gc_dead`` with the targets and, with ``closure``, what only they keep alive."""
    await mark.create_tables(conn)
    await db.target(conn, targets)
    if closure:
        start = await mark.now(conn)
        await mark.mark(conn, mark.Cutoffs(start=start, retention=retention, grace=None))
        await db.doom_closure(conn)
    else:
        await db.doom_targets(conn)


async def _sweep(conn: Connection, ctx: GcContext, levels: int, now: datetime) -> sweep.SweepOutcome:
    total = sweep.SweepOutcome()
    files = await db.dead_files(conn)
    for level in range(levels):
        after = ""
        while hashes := await mark.dead_page(conn, level, after, 1000):
            after = hashes[-1]
            outcome, keys = await sweep.retire_paths(ctx.pool, hashes, retention=None)
            total.add(outcome)
            if keys:
                total.add(await sweep.delete_narinfos(ctx.pool, ctx.bucket, keys, grace=now))
    for start in range(0, len(files), 1000):
        outcome, doomed = await sweep.retire_objects(ctx.pool, files[start : start + 1000], grace=now)
        total.add(outcome)
        if doomed:
            total.add(await sweep.delete_objects(ctx.pool, ctx.bucket, doomed))
    return total


async def delete_path(
    ctx: GcContext, hash_part: str, *, closure: bool, force: bool, older_than: timedelta, requested_by: str
) -> dict[str, Any]:
    """Delete the published path with ``hash_part`` (see the module docstring); returns the API's answer.

    Raises NotFound ``path_not_found`` or StateConflict ``path_in_use``, GcRunning while a run holds the lock, and
    StateConflict ``import_unfinished`` while the newest import has not finished (paths it has not registered yet
    may reference the path, and nothing here could see them).
    """
    async with ctx.pool.acquire() as conn:
        if not await try_lock(conn):
            raise GcRunning(await running_run(conn))
        try:
            await refuse_after_unfinished_import(conn, "deleting a path")
            answer = await _delete_locked(conn, ctx, hash_part, closure=closure, force=force, older_than=older_than)
        finally:
            await mark.drop_tables(conn)
            await unlock(conn)
    log_event(
        logger,
        logging.WARNING,
        "gc.path_deleted",
        "deleted %s and %d other path(s) on request of %s (closure=%s, force=%s): %d objects, %d bytes",
        answer["path"],
        max(0, len(answer["deleted"]) - 1),
        requested_by,
        closure,
        force,
        answer["objects_deleted"],
        answer["bytes_freed"],
        path=answer["path"],
        paths_deleted=len(answer["deleted"]),
        objects_deleted=answer["objects_deleted"],
        bytes_freed=answer["bytes_freed"],
        requested_by=requested_by,
    )
    return answer


async def _delete_locked(
    conn: Connection, ctx: GcContext, hash_part: str, *, closure: bool, force: bool, older_than: timedelta
) -> dict[str, Any]:
    name = await db_paths.path_name(conn, hash_part)
    if name is None:
        raise NotFound(f"no published store path has the hash {hash_part}", code="path_not_found")
    path = f"/nix/store/{hash_part}-{name}"
    targets = await _targets(conn, hash_part, force=force)
    holders = await _holders(conn, hash_part, targets)
    if any(holders.values()):
        if not force:
            raise _refusal(path, holders)
        await _release(conn, ctx, targets, holders)
    now = await mark.clock_now(conn)
    await _doomed(conn, targets, closure=closure, retention=now - older_than)
    levels, _ = await mark.order_dead(conn)
    total = await _sweep(conn, ctx, levels, now)
    kept = await db.still_published(conn)
    counts = Counter({k: v for k, v in total.counts.items() if k.endswith("_deleted")})
    objects = sum(v for k, v in counts.items() if k != "paths_deleted")
    return {
        "path": path,
        "deleted": sorted(total.paths),
        "kept": kept,
        "objects_deleted": objects,
        "counts": dict(sorted(counts.items())),
        "bytes_freed": total.bytes_freed,
    }
