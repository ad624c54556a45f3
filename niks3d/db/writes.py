"""Queries of the HTTP write path (stock ``nix copy --to``): checked NARs, per-path files, named roots.

Locking follows docs/database.md: a NAR about to be named by a narinfo is held ``FOR SHARE`` (which conflicts
with a GC sweep's ``FOR UPDATE`` and with its retiring ``UPDATE``), so GC either finishes with it before the
narinfo commit looks, or sees the new ``store_paths`` row after it.
"""

from __future__ import annotations

__all__ = [
    "NarFacts",
    "add_root_member",
    "delete_root",
    "facts_of_nar",
    "list_root",
    "lock_nar_with_facts",
    "paths_built_by",
    "published_narinfo",
    "record_nar",
    "record_path_file",
]

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asyncpg import Connection


@dataclass(frozen=True, slots=True)
class NarFacts:
    """What niks3d found when it received a NAR (or what a published path says of its NAR)."""

    key: str
    compression: str
    nar_hash: str  # sha256:<nix32>
    nar_size: int
    file_hash: str  # sha256:<nix32> of the stored bytes
    file_size: int


async def facts_of_nar(conn: Connection, key: str) -> NarFacts | None:
    """The checked facts of the NAR object ``key``: from its upload by PUT, else from a path published with it."""
    row = await conn.fetchrow(
        """SELECT f.compression, f.nar_hash, f.nar_size, o.file_hash, o.size AS file_size
           FROM nar_facts f JOIN objects o ON o.key = f.key
           WHERE f.key = $1 AND o.state = 'present' AND o.file_hash IS NOT NULL""",
        key,
    )
    if row is None:
        row = await conn.fetchrow(
            """SELECT compression, nar_hash, nar_size, file_hash, file_size FROM store_paths
               WHERE nar_key = $1 LIMIT 1""",
            key,
        )
    if row is None:
        return None
    return NarFacts(key, row["compression"], row["nar_hash"], row["nar_size"], row["file_hash"], row["file_size"])


async def lock_nar_with_facts(conn: Connection, key: str) -> tuple[str | None, NarFacts | None]:
    """Lock the row of the NAR ``key`` ``FOR SHARE`` and read its checked facts in one statement (as
    a lock of the row, then :func:`facts_of_nar`): (its state or None without a row, the facts when present)."""
    row = await conn.fetchrow(
        """SELECT o.state, o.file_hash, o.size AS file_size, f.compression, f.nar_hash, f.nar_size
           FROM objects o LEFT JOIN nar_facts f ON f.key = o.key
           WHERE o.key = $1 FOR SHARE OF o""",
        key,
    )
    if row is None:
        return None, None
    if row["state"] != "present":
        return row["state"], None
    if row["compression"] is not None and row["file_hash"] is not None:
        facts = NarFacts(key, row["compression"], row["nar_hash"], row["nar_size"], row["file_hash"], row["file_size"])
        return row["state"], facts
    return row["state"], await facts_of_nar(conn, key)


async def record_nar(conn: Connection, facts: NarFacts, token_name: str) -> None:
    """The NAR ``facts.key`` is in the bucket and checked: mark it present and keep what was found. (Its key is
    its FileHash, so what is there is what was checked: a push's placement of the same key, which no key of a
    push can be, would end here.)"""
    await conn.execute(
        """UPDATE objects SET state = 'present', size = $2, file_hash = $3, present_at = coalesce(present_at, now()),
                  placer = NULL, placer_until = NULL
           WHERE key = $1""",
        facts.key,
        facts.file_size,
        facts.file_hash,
    )
    await conn.execute(
        """INSERT INTO nar_facts (key, compression, nar_hash, nar_size, file_size, token_name)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (key) DO UPDATE SET compression = excluded.compression, nar_hash = excluded.nar_hash,
               nar_size = excluded.nar_size, file_size = excluded.file_size, checked_at = now()""",
        facts.key,
        facts.compression,
        facts.nar_hash,
        facts.nar_size,
        facts.file_size,
        token_name,
    )


async def published_narinfo(conn: Connection, hash_part: str) -> str | None:
    """The published narinfo of ``hash_part``, locked ``FOR SHARE`` (None if the path is not published)."""
    value: str | None = await conn.fetchval("SELECT narinfo FROM store_paths WHERE hash = $1 FOR SHARE", hash_part)
    return value


async def paths_built_by(conn: Connection, deriver: str) -> list[str]:
    """Hash parts of the published paths whose Deriver is ``deriver`` (a ``.drv`` basename), locked in order."""
    rows = await conn.fetch(
        "SELECT hash FROM store_paths WHERE deriver = $1 ORDER BY hash FOR SHARE",
        deriver,
    )
    return [r["hash"] for r in rows]


async def record_path_file(
    conn: Connection, hashes: Sequence[str], key: str, kind: str, *, size: int, digest: str
) -> None:
    """The per-path file ``key`` is in the bucket: mark it present and let it live with ``hashes``."""
    await conn.execute(
        """UPDATE objects SET state = 'present', size = $2, file_hash = $3, present_at = coalesce(present_at, now())
           WHERE key = $1""",
        key,
        size,
        digest,
    )
    await conn.execute(
        """INSERT INTO path_files (hash, key, kind) SELECT h, $2, $3 FROM unnest($1::text[]) AS x(h)
           ON CONFLICT DO NOTHING""",
        list(hashes),
        key,
        kind,
    )


async def add_root_member(conn: Connection, name: str, hash_part: str, token_name: str) -> None:
    await conn.execute(
        """INSERT INTO root_members (name, hash, added_at, added_by) VALUES ($1, $2, now(), $3)
           ON CONFLICT (name, hash) DO UPDATE SET added_at = now()""",
        name,
        hash_part,
        token_name,
    )


async def list_root(conn: Connection, name: str) -> list[tuple[str, datetime, str]]:
    """The members of root ``name``: (full store path, added at, added by), in path order."""
    rows = await conn.fetch(
        """SELECT '/nix/store/' || s.hash || '-' || s.name AS path, m.added_at, m.added_by
           FROM root_members m JOIN store_paths s ON s.hash = m.hash WHERE m.name = $1 ORDER BY path""",
        name,
    )
    return [(r["path"], r["added_at"], r["added_by"]) for r in rows]


async def delete_root(conn: Connection, name: str) -> int:
    """Forget root ``name``; how many members it had."""
    status: str = await conn.execute("DELETE FROM root_members WHERE name = $1", name)
    return int(status.rsplit(" ", 1)[-1])
