"""Sweeping: the batch transactions that delete store paths and objects without ever racing a push into a loss.

Every deletion goes in two steps, each a short transaction that first locks its rows ``FOR UPDATE`` (in key
order) and then re-checks, in a new statement, that nothing needs them (docs/database.md, locking rules; the
statements are in :mod:`niks3d.db.gc.sweep`):

1. **retire**: a store path loses its ``store_paths`` row (its references, files and root go with it), and its
   narinfo object row becomes ``pending``; an object nothing needs any more becomes ``pending``. Committed, this
   says durably "this object may be gone from the bucket", before anything is deleted: a push that needs it from
   now on uploads it again, and a crash later leaves nothing that claims to be present.
2. **delete**: still holding the rows, re-checked again, the objects are deleted from the bucket and then their
   rows. A push that claims one of them meanwhile blocks on the lock and then finds the row gone, so it re-creates
   the row and uploads again after the delete.

A pending narinfo that no store path row names is never a published narinfo (publication writes narinfos while
holding their rows and commits the ``store_paths`` row with them), so :func:`delete_narinfos` deletes its bytes
even when a session claims the key; only the row then stays, for the claim.
"""

from __future__ import annotations

__all__ = [
    "SweepOutcome",
    "delete_narinfos",
    "delete_objects",
    "retire_objects",
    "retire_paths",
]

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from niks3d.db.gc import sweep as db
from niks3d.db.gc.sweep import KIND_COUNTS
from niks3d.db.notify import notify_store_paths
from niks3d.db.pool import DbPool
from niks3d.db.retry import retry_transaction
from niks3d.storage.s3 import Bucket

logger = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What some batches did: counts by name (see :data:`KIND_COUNTS`), bytes freed, what was deleted."""

    counts: Counter[str] = field(default_factory=Counter)
    bytes_freed: int = 0
    paths: list[str] = field(default_factory=list)  # full store paths retired

    def add(self, other: SweepOutcome) -> None:
        self.counts.update(other.counts)
        self.bytes_freed += other.bytes_freed
        self.paths.extend(other.paths)


async def retire_paths(
    pool: DbPool, hashes: Sequence[str], *, retention: datetime | None
) -> tuple[SweepOutcome, list[str]]:
    """Step 1 for dead store paths; returns the outcome and the narinfo keys of the retired paths.

    A path stays when, under the lock, a session claims its narinfo, another path references it, a pin names it,
    or (with ``retention``) a root pushed after ``retention`` names it. The caller deletes the narinfos with
    :func:`delete_narinfos` before the next level.
    """
    wanted = sorted(hashes)

    async def attempt() -> tuple[SweepOutcome, list[str]]:
        outcome = SweepOutcome()
        async with pool.acquire() as conn, conn.transaction():
            await db.defer_reference_checks(conn)
            await db.lock_objects(conn, [f"{h}.narinfo" for h in wanted])
            await db.lock_paths(conn, wanted)
            records = await db.retirable_paths(conn, wanted, retention)
            going = [r["hash"] for r in records]
            keys = [r["narinfo_key"] for r in records]
            if going:
                await db.delete_paths(conn, going)
                await db.mark_pending(conn, keys)
                # every daemon's read proxy forgets these narinfos when (and only if) this transaction commits
                await notify_store_paths(conn, deleted=going)
            outcome.counts["paths_deleted"] += len(going)
            outcome.counts["paths_kept"] += len(wanted) - len(going)
            outcome.paths.extend(f"/nix/store/{r['hash']}-{r['name']}" for r in records)
            return outcome, keys

    return await retry_transaction(attempt)


async def _delete_from_bucket(bucket: Bucket, keys: list[str], outcome: SweepOutcome) -> set[str]:
    """Delete ``keys`` from the bucket; the keys that are gone now (refusals are counted and logged)."""
    if not keys:
        return set()
    result = await bucket.delete_many(keys)
    if result.errors:
        outcome.counts["delete_errors"] += len(result.errors)
        for error in result.errors[:5]:
            logger.warning("S3 refused to delete %s: %s %s", error.key, error.code, error.message)
    return set(result.deleted)


async def delete_narinfos(pool: DbPool, bucket: Bucket, keys: Sequence[str], *, grace: datetime) -> SweepOutcome:
    """Step 2 for narinfo objects: delete from the bucket every one that is pending and names no store path;
    delete the rows of those no session claims and created before ``grace``."""
    wanted = sorted(keys)

    async def attempt() -> SweepOutcome:
        outcome = SweepOutcome()
        async with pool.acquire() as conn, conn.transaction():
            await db.lock_objects(conn, wanted)
            records = await db.deletable_narinfos(conn, wanted, grace)
            gone = await _delete_from_bucket(bucket, [r["key"] for r in records], outcome)
            rows = [r for r in records if r["key"] in gone and r["old"] and not r["claimed"]]
            if rows:
                await db.delete_object_rows(conn, [r["key"] for r in rows])
            outcome.counts["narinfos_deleted"] += len(rows)
            outcome.bytes_freed += sum(r["size"] for r in rows)
            return outcome

    return await retry_transaction(attempt)


async def retire_objects(pool: DbPool, keys: Sequence[str], *, grace: datetime) -> tuple[SweepOutcome, list[str]]:
    """Step 1 for objects other than narinfos: those nothing needs and last written before ``grace`` become
    pending; returns the outcome and the keys to pass to :func:`delete_objects`."""
    wanted = sorted(keys)

    async def attempt() -> tuple[SweepOutcome, list[str]]:
        outcome = SweepOutcome()
        async with pool.acquire() as conn, conn.transaction():
            await db.lock_objects(conn, wanted)
            doomed = await db.retirable_objects(conn, wanted, grace)
            if doomed:
                await db.mark_pending(conn, doomed)
            outcome.counts["objects_kept"] += len(wanted) - len(doomed)
            return outcome, doomed

    return await retry_transaction(attempt)


async def delete_objects(pool: DbPool, bucket: Bucket, keys: Sequence[str]) -> SweepOutcome:
    """Step 2 for objects other than narinfos: those still pending and unneeded go from the bucket, then their rows."""
    wanted = sorted(keys)

    async def attempt() -> SweepOutcome:
        outcome = SweepOutcome()
        async with pool.acquire() as conn, conn.transaction():
            await db.lock_objects(conn, wanted)
            records = await db.deletable_objects(conn, wanted)
            gone = await _delete_from_bucket(bucket, [r["key"] for r in records], outcome)
            rows = [r for r in records if r["key"] in gone]
            if rows:
                await db.delete_object_rows(conn, [r["key"] for r in rows])
            for r in rows:
                outcome.counts[KIND_COUNTS[r["kind"]]] += 1
            outcome.bytes_freed += sum(r["size"] for r in rows)
            outcome.counts["objects_kept"] += len(wanted) - len(rows)
            return outcome

    return await retry_transaction(attempt)
