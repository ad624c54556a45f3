"""Queries of ``niks3d fsck``: the published paths with everything they need, and the always-safe repairs
(docs/operations.md, "Checking the cache")."""

from __future__ import annotations

__all__ = [
    "CheckedPath",
    "db_now",
    "drop_files",
    "paths_after",
    "present_objects_after",
    "release_unneeded",
    "unpublished_references",
]

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asyncpg import Connection


@dataclass(frozen=True, slots=True)
class CheckedPath:
    hash: str
    narinfo_key: str
    narinfo: str
    nar_key: str
    file_size: int
    references: tuple[str, ...]  # hash parts, from path_references
    files: tuple[tuple[str, str, int | None], ...]  # (key, kind, recorded size)
    compression: str = "zstd"  # of the NAR


async def db_now(conn: Connection) -> datetime:
    value: datetime = await conn.fetchval("SELECT now()")
    return value


async def paths_after(conn: Connection, after: str, before: datetime, limit: int) -> list[CheckedPath]:
    """Published paths (published before ``before``) with hash > ``after``, in hash order."""
    rows = await conn.fetch(
        """SELECT s.hash, s.narinfo_key, s.narinfo, s.nar_key, s.file_size, s.compression,
                  array(SELECT r.reference FROM path_references r WHERE r.referrer = s.hash ORDER BY 1) AS refs,
                  array(SELECT f.key FROM path_files f WHERE f.hash = s.hash ORDER BY 1) AS file_keys,
                  array(SELECT f.kind FROM path_files f WHERE f.hash = s.hash ORDER BY f.key) AS file_kinds,
                  array(SELECT o.size FROM path_files f JOIN objects o ON o.key = f.key
                        WHERE f.hash = s.hash ORDER BY f.key) AS file_sizes
           FROM store_paths s WHERE s.hash > $1 AND s.published_at < $2 ORDER BY s.hash LIMIT $3""",
        after,
        before,
        limit,
    )
    return [
        CheckedPath(
            hash=r["hash"],
            narinfo_key=r["narinfo_key"],
            narinfo=r["narinfo"],
            nar_key=r["nar_key"],
            file_size=r["file_size"],
            references=tuple(r["refs"]),
            files=tuple(zip(r["file_keys"], r["file_kinds"], r["file_sizes"], strict=True)),
            compression=r["compression"],
        )
        for r in rows
    ]


async def unpublished_references(conn: Connection) -> list[tuple[str, str]]:
    """``(referrer, reference)`` rows whose reference is not published (the foreign key forbids it)."""
    rows = await conn.fetch(
        """SELECT referrer, reference FROM path_references r
           WHERE NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.hash = r.reference) ORDER BY 1, 2"""
    )
    return [(r["referrer"], r["reference"]) for r in rows]


async def present_objects_after(
    conn: Connection, after: str, before: datetime, limit: int
) -> list[tuple[str, str, int]]:
    """``(key, kind, size)`` of objects recorded present (created before ``before``), key > ``after``."""
    rows = await conn.fetch(
        """SELECT key, kind, size FROM objects
           WHERE key > $1 AND state = 'present' AND created_at < $2 ORDER BY key LIMIT $3""",
        after,
        before,
        limit,
    )
    return [(r["key"], r["kind"], r["size"]) for r in rows]


async def drop_files(conn: Connection, files: Sequence[tuple[str, str]]) -> None:
    """Forget ``(hash, key)`` per-path files that are gone from the bucket."""
    await conn.execute(
        """DELETE FROM path_files f USING unnest($1::text[], $2::text[]) AS x(hash, key)
           WHERE f.hash = x.hash AND f.key = x.key""",
        [h for h, _ in files],
        [k for _, k in files],
    )


async def release_unneeded(conn: Connection, keys: Sequence[str]) -> int:
    """Objects recorded present that are absent from the bucket and that no published path names become
    ``pending`` (nothing claims they are there; GC forgets them); returns how many."""
    status: str = await conn.execute(
        """UPDATE objects o SET state = 'pending', present_at = NULL, proven = false
           WHERE o.key = ANY($1::text[]) AND o.state = 'present'
             AND NOT EXISTS (SELECT 1 FROM store_paths s WHERE s.nar_key = o.key OR s.narinfo_key = o.key)
             AND NOT EXISTS (SELECT 1 FROM path_files f WHERE f.key = o.key)""",
        list(keys),
    )
    return int(status.rsplit(maxsplit=1)[-1])


async def set_sizes(conn: Connection, sizes: list[tuple[str, int]]) -> None:
    """Record the sizes of objects niks3d wrote again (``fsck --listings --repair``)."""
    await conn.execute(
        "UPDATE objects o SET size = x.size FROM unnest($1::text[], $2::bigint[]) AS x(key, size) WHERE o.key = x.key",
        [k for k, _ in sizes],
        [s for _, s in sizes],
    )
