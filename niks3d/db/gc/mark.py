"""Marking: which store paths are live and in which order the dead ones may go, computed inside PostgreSQL.

Nothing of the graph is loaded into Python. On the collector's own connection, temporary tables hold the
state of one run:

* ``gc_target``: paths that must not count as roots nor be reached (the paths a deletion request names);
  empty for a normal run.
* ``gc_live``: the roots, then one ``INSERT ... SELECT`` per round that adds the references of the paths the
  previous round added (``gc_frontier``): a breadth-first walk that visits each path and reference once.
* ``gc_dead (hash, indeg, level)``: every published path that was not marked, and its position in a
  referrers-first order: level 0 holds dead paths that no other dead path references, level k+1 the paths whose
  last dead referrer is at level k (Kahn's algorithm, one statement per level). Deleting level by level never
  deletes a path before a path that references it.

Cost grows with the number of paths and references, not with the size of the objects.
"""

from __future__ import annotations

__all__ = [
    "Cutoffs",
    "clock_now",
    "create_tables",
    "dead_count",
    "dead_page",
    "drop_tables",
    "find_dead",
    "mark",
    "now",
    "order_dead",
]

import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg import Connection

logger = logging.getLogger(__name__)

_TABLES = ("gc_target", "gc_live", "gc_frontier", "gc_next", "gc_dead")
# Memory of the PostgreSQL backend that marks (not of niks3d): see _tune.
WORK_MEM = "128MB"
TEMP_BUFFERS = "512MB"


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """The instants a run compares ages against, all from the database's clock.

    ``start``: when the run began; paths published later are not considered at all. ``retention``: pushed roots
    pushed before it have expired. ``grace``: objects and paths younger than it are left alone (None: no grace
    roots, for deletion requests). ``exclude_stale_claims``: claims of open sessions past their expiry do not
    count (a dry run, which does not expire them).
    """

    start: datetime
    retention: datetime
    grace: datetime | None
    exclude_stale_claims: bool = False


async def now(conn: Connection) -> datetime:
    """The database's clock at the start of the current transaction: the instant cutoffs are measured from."""
    value: datetime = await conn.fetchval("SELECT now()")
    return value


async def clock_now(conn: Connection) -> datetime:
    """The database's clock now, even inside a transaction."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


def _rows(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 42`` or ``UPDATE 7``."""
    return int(status.rsplit(" ", 1)[-1])


async def _tune(conn: Connection) -> None:
    """Give this connection's backend room for the run: hash tables of a million paths fit in ``work_mem``, and
    temporary tables of that size stay in ``temp_buffers`` (settable only before the session's first temporary
    table, so a pooled connection that had one keeps what it had). JIT compilation costs more than it saves here."""
    await conn.execute(f"SET work_mem = '{WORK_MEM}'; SET jit = off")
    try:
        await conn.execute(f"SET temp_buffers = '{TEMP_BUFFERS}'")
    except asyncpg.PostgresError as exc:
        logger.debug("temp_buffers stays as it is: %s", exc)


async def create_tables(conn: Connection) -> None:
    """(Re)create the run's temporary tables on ``conn``."""
    await _tune(conn)
    await drop_tables(conn)
    await conn.execute(
        """CREATE TEMP TABLE gc_target (hash text PRIMARY KEY);
           CREATE TEMP TABLE gc_live (hash text PRIMARY KEY);
           CREATE TEMP TABLE gc_frontier (hash text NOT NULL);
           CREATE TEMP TABLE gc_next (hash text NOT NULL);
           CREATE TEMP TABLE gc_dead (hash text PRIMARY KEY, indeg int NOT NULL DEFAULT 0, level int);
           CREATE INDEX ON gc_dead (level, hash);"""
    )


async def drop_tables(conn: Connection) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {', '.join(_TABLES)}")


async def mark(conn: Connection, cutoffs: Cutoffs) -> tuple[int, int]:
    """Fill ``gc_live`` from the roots; returns (live paths, depth of the deepest one).

    Each round joins only the paths added by the previous round (``gc_frontier``) with their references, and
    keeps the ones not seen before; the frontier is analyzed every round, so the planner probes the reference
    index for a small frontier and hashes the whole table for a large one.
    """
    seeded = _rows(
        await conn.execute(
            """WITH added AS (
                   INSERT INTO gc_live (hash)
                   SELECT seeds.hash FROM (
                       SELECT hash FROM roots WHERE last_pushed_at > $1
                       UNION SELECT hash FROM pins
                       UNION SELECT hash FROM root_members
                       UNION SELECT hash FROM store_paths WHERE published_at > $2
                       UNION SELECT s.hash FROM session_claims c
                             JOIN store_paths s ON s.narinfo_key = c.key
                             JOIN upload_sessions u ON u.id = c.session_id
                             WHERE NOT ($3 AND u.state = 'open' AND u.expires_at <= $4)
                   ) seeds
                   WHERE NOT EXISTS (SELECT 1 FROM gc_target t WHERE t.hash = seeds.hash)
                   ON CONFLICT DO NOTHING
                   RETURNING hash)
               INSERT INTO gc_frontier (hash) SELECT hash FROM added""",
            cutoffs.retention,
            cutoffs.grace,
            cutoffs.exclude_stale_claims,
            cutoffs.start,
        )
    )
    total, depth, added = seeded, 0, seeded
    while added:
        await conn.execute("ANALYZE gc_frontier")
        added = _rows(
            await conn.execute(
                """WITH added AS (
                       INSERT INTO gc_live (hash)
                       SELECT DISTINCT r.reference FROM gc_frontier f JOIN path_references r ON r.referrer = f.hash
                       WHERE NOT EXISTS (SELECT 1 FROM gc_target t WHERE t.hash = r.reference)
                       ON CONFLICT DO NOTHING
                       RETURNING hash)
                   INSERT INTO gc_next (hash) SELECT hash FROM added"""
            )
        )
        await conn.execute("TRUNCATE gc_frontier; INSERT INTO gc_frontier SELECT hash FROM gc_next; TRUNCATE gc_next")
        total += added
        if added:
            depth += 1
    await conn.execute("ANALYZE gc_live")
    return total, depth


async def find_dead(conn: Connection, cutoffs: Cutoffs) -> int:
    """Fill ``gc_dead`` with the published paths that were not marked; returns how many."""
    count = _rows(
        await conn.execute(
            """INSERT INTO gc_dead (hash)
               SELECT s.hash FROM store_paths s
               WHERE s.published_at <= $1 AND NOT EXISTS (SELECT 1 FROM gc_live l WHERE l.hash = s.hash)""",
            cutoffs.start,
        )
    )
    await conn.execute("ANALYZE gc_dead")
    return count


async def order_dead(conn: Connection) -> tuple[int, int]:
    """Give every path in ``gc_dead`` its level (referrers first); returns (levels, paths left without one).

    Paths left without a level would sit on a reference cycle, which Nix never produces; they are not deleted.
    """
    await conn.execute(
        """UPDATE gc_dead d SET indeg = c.n
           FROM (SELECT r.reference AS hash, count(*) AS n
                 FROM gc_dead x JOIN path_references r ON r.referrer = x.hash
                 WHERE r.reference <> r.referrer
                 GROUP BY r.reference) c
           WHERE d.hash = c.hash"""
    )
    placed = _rows(await conn.execute("UPDATE gc_dead SET level = 0 WHERE indeg = 0"))
    level = 0
    while placed:
        placed = int(
            await conn.fetchval(
                """WITH step AS (
                       UPDATE gc_dead d SET indeg = d.indeg - c.n,
                                            level = CASE WHEN d.indeg = c.n THEN $1::int + 1 END
                       FROM (SELECT r.reference AS hash, count(*) AS n
                             FROM gc_dead f JOIN path_references r ON r.referrer = f.hash
                             WHERE f.level = $1 AND r.reference <> r.referrer
                             GROUP BY r.reference) c
                       WHERE d.hash = c.hash AND d.level IS NULL
                       RETURNING d.level)
                   SELECT count(*) FROM step WHERE level IS NOT NULL""",
                level,
            )
        )
        level += 1
    unplaced = int(await conn.fetchval("SELECT count(*) FROM gc_dead WHERE level IS NULL"))
    return level, unplaced


async def dead_count(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM gc_dead WHERE level IS NOT NULL"))


async def dead_page(conn: Connection, level: int, after: str, limit: int) -> list[str]:
    """The next ``limit`` dead paths of ``level`` after hash ``after`` (keyset pagination, in hash order)."""
    records = await conn.fetch(
        "SELECT hash FROM gc_dead WHERE level = $1 AND hash > $2 ORDER BY hash LIMIT $3",
        level,
        after,
        limit,
    )
    return [r["hash"] for r in records]
