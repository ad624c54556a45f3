"""Which objects a run looks at, chosen in one statement each into the temporary table ``gc_keys``.

The choice is only a candidate list: every batch locks its rows and re-checks before it deletes anything
(:mod:`niks3d.gc.sweep`, :mod:`niks3d.db.gc.sweep`). Choosing in one statement lets PostgreSQL use hash anti-joins
over the whole tables, which costs one pass over ``objects`` however many of them are garbage; the sweep then pages
through ``gc_keys`` in key order. :func:`planned_counts` answers a dry run with the same rules, without deleting
anything.
"""

from __future__ import annotations

__all__ = ["drop_table", "fill_narinfo_candidates", "fill_object_candidates", "key_page", "planned_counts"]

from collections import Counter

from asyncpg import Connection

from niks3d.db.gc.mark import Cutoffs
from niks3d.db.gc.sweep import KIND_COUNTS


async def drop_table(conn: Connection) -> None:
    await conn.execute("DROP TABLE IF EXISTS gc_keys")


async def _reset(conn: Connection) -> None:
    await conn.execute(
        "DROP TABLE IF EXISTS gc_keys; CREATE TEMP TABLE gc_keys (key text PRIMARY KEY, size bigint NOT NULL)"
    )


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def fill_narinfo_candidates(conn: Connection) -> int:
    """Pending narinfo objects that name no store path: left by a crash, a failed push, or an adopted orphan."""
    await _reset(conn)
    return _count(
        await conn.execute(
            """INSERT INTO gc_keys (key, size)
               SELECT o.key, coalesce(o.size, 0) FROM objects o
               WHERE o.state = 'pending' AND o.kind = 'narinfo'
                 AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.narinfo_key = o.key)"""
        )
    )


async def fill_object_candidates(conn: Connection, cutoffs: Cutoffs) -> int:
    """Objects other than narinfos that no claim, store path or per-path file needs, last written before grace."""
    await _reset(conn)
    return _count(
        await conn.execute(
            """INSERT INTO gc_keys (key, size)
               SELECT o.key, coalesce(o.size, 0) FROM objects o
               WHERE o.kind <> 'narinfo' AND coalesce(o.present_at, o.created_at) < $1
                 AND NOT EXISTS (SELECT 1 FROM session_claims c WHERE c.key = o.key)
                 AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.nar_key = o.key)
                 AND NOT EXISTS (SELECT 1 FROM path_files f WHERE f.key = o.key)""",
            cutoffs.grace,
        )
    )


async def key_page(conn: Connection, after: str, limit: int) -> list[str]:
    """The next ``limit`` candidate keys after ``after``, in key order."""
    records = await conn.fetch("SELECT key FROM gc_keys WHERE key > $1 ORDER BY key LIMIT $2", after, limit)
    return [r["key"] for r in records]


async def planned_counts(conn: Connection, cutoffs: Cutoffs) -> tuple[Counter[str], int]:
    """For a dry run, after marking: the objects a run would delete, by count name, and their bytes.

    Paths in ``gc_dead`` count as deleted; claims of sessions past their expiry count as gone.
    """
    live_claim = """EXISTS (SELECT 1 FROM session_claims c JOIN upload_sessions u ON u.id = c.session_id
                            WHERE c.key = o.key AND NOT (u.state = 'open' AND u.expires_at <= $1))"""
    kept_path = "NOT EXISTS (SELECT 1 FROM gc_dead d WHERE d.hash = {col} AND d.level IS NOT NULL)"
    records = await conn.fetch(
        f"""SELECT o.kind, count(*) AS n, coalesce(sum(o.size), 0) AS bytes FROM objects o
            WHERE NOT {live_claim}
              AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.nar_key = o.key AND {kept_path.format(col="s.hash")})
              AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.narinfo_key = o.key
                                                            AND {kept_path.format(col="s.hash")})
              AND NOT EXISTS (SELECT 1 FROM path_files f WHERE f.key = o.key AND {kept_path.format(col="f.hash")})
              AND (EXISTS (SELECT 1 FROM store_paths s JOIN gc_dead d ON d.hash = s.hash
                           WHERE s.narinfo_key = o.key AND d.level IS NOT NULL)
                   OR CASE WHEN o.kind = 'narinfo' THEN o.created_at ELSE coalesce(o.present_at, o.created_at) END
                      < $2)
            GROUP BY o.kind""",  # noqa: S608 - constant SQL
        cutoffs.start,
        cutoffs.grace,
    )
    counts: Counter[str] = Counter()
    total = 0
    for r in records:
        counts[KIND_COUNTS[r["kind"]]] += int(r["n"])
        total += int(r["bytes"])
    return counts, total
