"""Queries on store paths proven upstream (``upstream_paths``) and the published paths that lean on them.

Locking rules (docs/database.md): publication upserts the records it needs with ``ON CONFLICT DO UPDATE``, which
locks an existing row until the publication commits, and then inserts the ``upstream_references`` rows. GC
forgets a record in two statements of one transaction: it locks unreferenced rows ``FOR UPDATE SKIP LOCKED``
(skipping those a publication holds), then deletes the ones still unreferenced. A publication that waited for
such a lock finds the row gone and inserts it again, so a record is never missing under a referrer.
"""

from __future__ import annotations

__all__ = ["UpstreamRecord", "forget_unreferenced", "forgettable_count", "insert_records", "known_records"]

from collections.abc import Sequence
from dataclasses import dataclass

from asyncpg import Connection


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    """One path proven upstream: the facts its signature covers, and the signature."""

    hash: str
    name: str
    nar_hash: str  # sha256:<nix32>
    nar_size: int
    refs: tuple[str, ...]  # basenames, sorted
    signature: str


async def insert_records(
    conn: Connection, records: Sequence[UpstreamRecord], referrers: Sequence[tuple[str, str]]
) -> None:
    """Record (or keep, locking them) ``records``, then the ``(referrer, reference)`` rows that lean on them.

    An existing record keeps its facts: a path's NarHash, NarSize and references do not change, and the new
    signature was verified just as the old one was.
    """
    if records:
        ordered = sorted(records, key=lambda r: r.hash)
        await conn.executemany(
            """INSERT INTO upstream_paths (hash, name, nar_hash, nar_size, refs, signature, recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6, now())
               ON CONFLICT (hash) DO UPDATE SET recorded_at = upstream_paths.recorded_at""",
            [(r.hash, r.name, r.nar_hash, r.nar_size, list(r.refs), r.signature) for r in ordered],
        )
    if referrers:
        await conn.execute(
            """INSERT INTO upstream_references (referrer, reference)
               SELECT a, b FROM unnest($1::text[], $2::text[]) AS x(a, b) ON CONFLICT DO NOTHING""",
            [a for a, _ in referrers],
            [b for _, b in referrers],
        )


async def known_records(conn: Connection, hashes: Sequence[str]) -> set[str]:
    """Which of ``hashes`` are recorded as proven upstream."""
    rows = await conn.fetch("SELECT hash FROM upstream_paths WHERE hash = ANY($1::text[])", list(hashes))
    return {r["hash"] for r in rows}


_UNREFERENCED = "NOT EXISTS (SELECT 1 FROM upstream_references r WHERE r.reference = u.hash)"


async def forgettable_count(conn: Connection) -> int:
    """For a dry run, on the collector's connection after marking: how many records no path would reference
    once the dead paths (``gc_dead``, niks3d/db/gc/mark.py) are gone."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM upstream_paths u
               WHERE NOT EXISTS (SELECT 1 FROM upstream_references r WHERE r.reference = u.hash
                                 AND NOT EXISTS (SELECT 1 FROM gc_dead d WHERE d.hash = r.referrer
                                                                          AND d.level IS NOT NULL))"""
        )
    )


async def forget_unreferenced(conn: Connection, limit: int) -> tuple[int, int]:
    """Forget up to ``limit`` records that no published path references; returns (looked at, forgotten).

    Runs its own transaction on ``conn``; call it again while it looked at ``limit`` records.
    """
    async with conn.transaction():
        locked = await conn.fetch(
            f"""SELECT hash FROM upstream_paths u WHERE {_UNREFERENCED}
                ORDER BY hash LIMIT $1 FOR UPDATE SKIP LOCKED""",  # noqa: S608 - constant SQL
            limit,
        )
        if not locked:
            return 0, 0
        # A new statement, a new snapshot: a publication that committed a reference meanwhile keeps its record.
        status: str = await conn.execute(
            f"DELETE FROM upstream_paths u WHERE u.hash = ANY($1::text[]) AND {_UNREFERENCED}",  # noqa: S608
            [r["hash"] for r in locked],
        )
    return len(locked), int(status.rsplit(" ", 1)[-1])
