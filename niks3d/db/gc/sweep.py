"""The sweep's statements: locking rows ``FOR UPDATE`` in key order, re-checking that nothing needs them, and
retiring or deleting them (docs/database.md, locking rules). :mod:`niks3d.gc.sweep` puts them together into its
two-step batches, with the bucket's deletes in between; every function here runs inside the caller's
transaction.
"""

from __future__ import annotations

__all__ = [
    "KIND_COUNTS",
    "defer_reference_checks",
    "deletable_narinfos",
    "deletable_objects",
    "delete_object_rows",
    "delete_paths",
    "lock_objects",
    "lock_paths",
    "mark_pending",
    "retirable_objects",
    "retirable_paths",
]

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from asyncpg import Connection

# objects.kind -> the name of its count in a run's counts
KIND_COUNTS = {
    "narinfo": "narinfos_deleted",
    "nar": "nars_deleted",
    "ls": "listings_deleted",
    "log": "logs_deleted",
    "realisation": "realisations_deleted",
}

# Nothing needs the object ``o``: no claim, no store path, no per-path file names it.
_UNNEEDED = """
    NOT EXISTS (SELECT 1 FROM session_claims c WHERE c.key = o.key)
    AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.nar_key = o.key)
    AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.narinfo_key = o.key)
    AND NOT EXISTS (SELECT 1 FROM path_files f WHERE f.key = o.key)
"""


async def lock_objects(conn: Connection, keys: Sequence[str]) -> None:
    await conn.execute("SELECT key FROM objects WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE", list(keys))


async def lock_paths(conn: Connection, hashes: Sequence[str]) -> None:
    await conn.execute(
        "SELECT hash FROM store_paths WHERE hash = ANY($1::text[]) ORDER BY hash FOR UPDATE", list(hashes)
    )


async def defer_reference_checks(conn: Connection) -> None:
    """Check ``path_references``' foreign key at commit: a batch deletes referrers and references together."""
    await conn.execute("SET CONSTRAINTS path_references_reference_fkey DEFERRED")


async def retirable_paths(conn: Connection, hashes: Sequence[str], retention: datetime | None) -> list[Any]:
    """Rows ``(hash, name, narinfo_key)`` of the locked paths nothing keeps: no session claims the narinfo, no
    other path references it, no pin or root member names it, and (with ``retention``) no root pushed after it."""
    return list(
        await conn.fetch(
            """SELECT p.hash, p.name, p.narinfo_key FROM store_paths p
               WHERE p.hash = ANY($1::text[])
                 AND NOT EXISTS (SELECT 1 FROM session_claims c WHERE c.key = p.narinfo_key)
                 AND NOT EXISTS (SELECT 1 FROM path_references r WHERE r.reference = p.hash
                                                                  AND r.referrer <> p.hash)
                 AND NOT EXISTS (SELECT 1 FROM pins WHERE pins.hash = p.hash)
                 AND NOT EXISTS (SELECT 1 FROM root_members m WHERE m.hash = p.hash)
                 AND NOT ($2::timestamptz IS NOT NULL AND EXISTS (
                     SELECT 1 FROM roots WHERE roots.hash = p.hash AND roots.last_pushed_at > $2))
               ORDER BY p.hash""",
            list(hashes),
            retention,
        )
    )


async def delete_paths(conn: Connection, hashes: Sequence[str]) -> None:
    """Delete the ``store_paths`` rows (references, files and roots go with them)."""
    await conn.execute("DELETE FROM store_paths WHERE hash = ANY($1::text[])", list(hashes))


async def mark_pending(conn: Connection, keys: Sequence[str]) -> None:
    """Present objects become pending: durably "may be gone from the bucket" before anything is deleted. A build
    log loses its proof with it (migration 0007): should it be uploaded again, it is proven again."""
    await conn.execute(
        """UPDATE objects SET state = 'pending', present_at = NULL, proven = false
           WHERE key = ANY($1::text[]) AND state = 'present'""",
        list(keys),
    )


async def deletable_narinfos(conn: Connection, keys: Sequence[str], grace: datetime) -> list[Any]:
    """Rows ``(key, size, old, claimed)`` of the pending narinfos among ``keys`` that name no store path; ``old``:
    created before ``grace``; ``claimed``: a session claims the key."""
    return list(
        await conn.fetch(
            """SELECT o.key, coalesce(o.size, 0) AS size, o.created_at < $2 AS old,
                      EXISTS (SELECT 1 FROM session_claims c WHERE c.key = o.key) AS claimed
               FROM objects o
               WHERE o.key = ANY($1::text[]) AND o.kind = 'narinfo' AND o.state = 'pending'
                 AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.narinfo_key = o.key)""",
            list(keys),
            grace,
        )
    )


async def retirable_objects(conn: Connection, keys: Sequence[str], grace: datetime) -> list[str]:
    """The keys among ``keys`` of objects other than narinfos that nothing needs, last written before ``grace``."""
    records = await conn.fetch(
        f"""SELECT o.key FROM objects o
            WHERE o.key = ANY($1::text[]) AND o.kind <> 'narinfo'
              AND coalesce(o.present_at, o.created_at) < $2 AND {_UNNEEDED}
            ORDER BY o.key""",  # noqa: S608 - constant SQL
        list(keys),
        grace,
    )
    return [r["key"] for r in records]


async def deletable_objects(conn: Connection, keys: Sequence[str]) -> list[Any]:
    """Rows ``(key, kind, size)`` of the objects among ``keys``, other than narinfos, still pending and unneeded."""
    return list(
        await conn.fetch(
            f"""SELECT o.key, o.kind, coalesce(o.size, 0) AS size FROM objects o
                WHERE o.key = ANY($1::text[]) AND o.kind <> 'narinfo' AND o.state = 'pending'
                  AND {_UNNEEDED}""",  # noqa: S608 - constant SQL
            list(keys),
        )
    )


async def delete_object_rows(conn: Connection, keys: Sequence[str]) -> None:
    await conn.execute("DELETE FROM objects WHERE key = ANY($1::text[])", list(keys))
