"""The statements of deleting one store path on request (:mod:`niks3d.gc.delete`): who holds the path, its
referrers, and filling the mark's ``gc_target`` and ``gc_dead`` tables (:mod:`niks3d.db.gc.mark`) with what goes.
They run on the connection that holds the collector's lock."""

from __future__ import annotations

__all__ = [
    "claiming_sessions",
    "dead_files",
    "delete_pins",
    "doom_closure",
    "doom_targets",
    "pin_names",
    "referrer_paths",
    "referrers_closure",
    "still_published",
    "target",
]

from collections.abc import Sequence

from asyncpg import Connection

_FULL_PATH = "'/nix/store/' || s.hash || '-' || s.name"


async def referrers_closure(conn: Connection, hash_part: str) -> list[str]:
    """The path and every path that references it, transitively, in hash order."""
    records = await conn.fetch(
        """WITH RECURSIVE up(hash) AS (
               SELECT $1::text
               UNION SELECT r.referrer FROM path_references r JOIN up ON r.reference = up.hash)
           SELECT hash FROM up ORDER BY hash""",
        hash_part,
    )
    return [r["hash"] for r in records]


async def pin_names(conn: Connection, hashes: Sequence[str]) -> list[str]:
    records = await conn.fetch("SELECT name FROM pins WHERE hash = ANY($1::text[]) ORDER BY name", list(hashes))
    return [r["name"] for r in records]


async def referrer_paths(conn: Connection, hash_part: str) -> list[str]:
    """The full store paths of the other paths that reference ``hash_part``."""
    records = await conn.fetch(
        f"""SELECT {_FULL_PATH} AS path FROM path_references r
            JOIN store_paths s ON s.hash = r.referrer
            WHERE r.reference = $1 AND r.referrer <> $1 ORDER BY s.hash""",  # noqa: S608 - constant SQL
        hash_part,
    )
    return [r["path"] for r in records]


async def claiming_sessions(conn: Connection, hashes: Sequence[str]) -> list[str]:
    """The ids of the sessions that claim the narinfo of one of ``hashes``."""
    records = await conn.fetch(
        """SELECT DISTINCT c.session_id::text AS id FROM session_claims c
           JOIN store_paths s ON s.narinfo_key = c.key WHERE s.hash = ANY($1::text[]) ORDER BY 1""",
        list(hashes),
    )
    return [r["id"] for r in records]


async def delete_pins(conn: Connection, hashes: Sequence[str]) -> None:
    await conn.execute("DELETE FROM pins WHERE hash = ANY($1::text[])", list(hashes))


async def target(conn: Connection, hashes: Sequence[str]) -> None:
    """Put ``hashes`` into ``gc_target``: the mark neither counts them as roots nor reaches them."""
    await conn.execute("INSERT INTO gc_target (hash) SELECT unnest($1::text[])", list(hashes))


async def doom_closure(conn: Connection) -> None:
    """After marking: ``gc_dead`` gets the targets and every path below them that the mark did not reach."""
    await conn.execute(
        """INSERT INTO gc_dead (hash)
           WITH RECURSIVE down(hash) AS (
               SELECT hash FROM gc_target
               UNION SELECT r.reference FROM path_references r JOIN down ON r.referrer = down.hash
                     WHERE NOT EXISTS (SELECT 1 FROM gc_live l WHERE l.hash = r.reference))
           SELECT hash FROM down"""
    )


async def doom_targets(conn: Connection) -> None:
    """``gc_dead`` gets the targets only."""
    await conn.execute("INSERT INTO gc_dead (hash) SELECT hash FROM gc_target")


async def dead_files(conn: Connection) -> list[str]:
    """The NAR and per-path file keys of the paths in ``gc_dead``."""
    records = await conn.fetch(
        """SELECT s.nar_key AS key FROM store_paths s JOIN gc_dead d ON d.hash = s.hash
           UNION SELECT f.key FROM path_files f JOIN gc_dead d ON d.hash = f.hash"""
    )
    return [r["key"] for r in records]


async def still_published(conn: Connection) -> list[str]:
    """The full store paths of the paths in ``gc_dead`` that are still published (kept at the re-check)."""
    records = await conn.fetch(
        f"""SELECT {_FULL_PATH} AS path FROM store_paths s
            JOIN gc_dead d ON d.hash = s.hash ORDER BY s.hash"""  # noqa: S608 - constant SQL
    )
    return [r["path"] for r in records]
