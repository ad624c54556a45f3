"""Queries of ``niks3d import``: the staging table of narinfos read from the bucket, the closure check and the
order of registration, and the rows a registration writes (docs/operations.md, "Importing a bucket").

Staging lives in a temporary table on the importer's own connection (which also holds the collector's advisory
lock, so no GC run can adopt and delete what is not registered yet). Registration writes, per batch and in one
transaction, exactly the rows a push's ``complete`` writes (``objects`` present, ``store_paths``, references,
``path_files``, roots): a batch is all or nothing, so a killed import leaves whole batches, and running it again
finds them registered and continues with the rest.
"""

from __future__ import annotations

__all__ = [
    "StagedPath",
    "adopt_untracked",
    "create_staging",
    "drop_staged",
    "known_object_keys",
    "mark_unclosed",
    "narinfos_unsigned_by",
    "register_objects",
    "registered_narinfos",
    "replace_narinfos",
    "root_time",
    "stage",
    "staged_graph",
    "staged_paths",
    "staged_problems",
    "staged_refs",
    "staged_unregistered",
    "touch_import_roots",
    "upsert_pins",
]

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asyncpg import Connection

_STAGING = """CREATE TEMP TABLE IF NOT EXISTS import_paths (
    hash          text PRIMARY KEY,
    name          text NOT NULL,
    nar_hash      text NOT NULL,
    nar_size      bigint NOT NULL,
    nar_key       text NOT NULL,
    compression   text NOT NULL,
    file_hash     text NOT NULL,
    file_size     bigint NOT NULL,
    deriver       text,
    ca            text,
    narinfo       text NOT NULL,
    refs          text[] NOT NULL,
    problem       text,
    missing_ref   text
)"""
_COLUMNS = (
    "hash",
    "name",
    "nar_hash",
    "nar_size",
    "nar_key",
    "compression",
    "file_hash",
    "file_size",
    "deriver",
    "ca",
    "narinfo",
    "refs",
)


@dataclass(frozen=True, slots=True)
class StagedPath:
    """One narinfo read from the bucket that parsed and whose NAR is there, as it will be registered."""

    hash: str
    name: str
    nar_hash: str
    nar_size: int
    nar_key: str
    compression: str
    file_hash: str
    file_size: int
    deriver: str | None
    ca: str | None
    narinfo: str
    refs: tuple[str, ...]  # hash parts, the path itself included if it references itself

    def record(self) -> tuple[Any, ...]:
        return tuple(list(self.refs) if c == "refs" else getattr(self, c) for c in _COLUMNS)


async def create_staging(conn: Connection) -> None:
    await conn.execute(_STAGING)
    await conn.execute("TRUNCATE import_paths")


async def stage(conn: Connection, paths: Sequence[StagedPath]) -> None:
    if paths:
        await conn.copy_records_to_table("import_paths", records=[p.record() for p in paths], columns=_COLUMNS)


async def registered_narinfos(conn: Connection) -> set[str]:
    """The hash parts of every published path."""
    return {r["hash"] for r in await conn.fetch("SELECT hash FROM store_paths")}


async def known_object_keys(conn: Connection, keys: Sequence[str]) -> set[str]:
    rows = await conn.fetch("SELECT key FROM objects WHERE key = ANY($1::text[])", list(keys))
    return {r["key"] for r in rows}


async def mark_unclosed(conn: Connection) -> int:
    """Mark staged paths with a reference that is neither published nor staged without a problem; repeat until
    nothing changes (a path above a broken one is broken too). Returns how many paths were marked."""
    total = 0
    while True:
        status: str = await conn.execute(
            """UPDATE import_paths s SET problem = 'reference_missing', missing_ref = m.ref
               FROM (SELECT s2.hash, min(r.ref) AS ref
                     FROM import_paths s2, unnest(s2.refs) AS r(ref)
                     WHERE s2.problem IS NULL AND r.ref <> s2.hash
                       AND NOT EXISTS (SELECT 1 FROM store_paths p WHERE p.hash = r.ref)
                       AND NOT EXISTS (SELECT 1 FROM import_paths t WHERE t.hash = r.ref AND t.problem IS NULL)
                     GROUP BY s2.hash) AS m
               WHERE s.hash = m.hash"""
        )
        changed = int(status.rsplit(maxsplit=1)[-1])
        total += changed
        if changed == 0:
            return total


async def staged_problems(conn: Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT hash, problem, missing_ref FROM import_paths WHERE problem IS NOT NULL ORDER BY hash"
    )
    return [(r["hash"], r["problem"], r["missing_ref"]) for r in rows]


async def staged_refs(conn: Connection, hashes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    rows = await conn.fetch("SELECT hash, refs FROM import_paths WHERE hash = ANY($1::text[])", list(hashes))
    return {r["hash"]: tuple(r["refs"]) for r in rows}


async def staged_graph(conn: Connection) -> dict[str, tuple[str, ...]]:
    """Every staged path without a problem and its references (hash parts, itself excluded), read once to order
    the registration (``niks3d.importer.order``)."""
    rows = await conn.fetch("SELECT hash, refs FROM import_paths WHERE problem IS NULL")
    return {r["hash"]: tuple(ref for ref in r["refs"] if ref != r["hash"]) for r in rows}


async def staged_unregistered(conn: Connection) -> list[str]:
    rows = await conn.fetch("SELECT hash FROM import_paths WHERE problem IS NULL ORDER BY hash")
    return [r["hash"] for r in rows]


async def staged_paths(conn: Connection, hashes: Sequence[str]) -> list[StagedPath]:
    rows = await conn.fetch(
        f"SELECT {', '.join(_COLUMNS)} FROM import_paths WHERE hash = ANY($1::text[]) ORDER BY hash",  # noqa: S608
        list(hashes),
    )
    return [StagedPath(**{**dict(r), "refs": tuple(r["refs"])}) for r in rows]


async def drop_staged(conn: Connection, hashes: Sequence[str]) -> None:
    await conn.execute("DELETE FROM import_paths WHERE hash = ANY($1::text[])", list(hashes))


async def register_objects(conn: Connection, objects: Iterable[tuple[str, str, int, str | None]]) -> None:
    """Record ``(key, kind, size, file_hash)`` objects as present, as a push's reports and ``complete`` do; rows
    that exist (a crashed push's pending rows, adopted orphans) become present, keeping their dates."""
    rows = list(objects)
    await conn.execute(
        """INSERT INTO objects (key, kind, state, size, present_at, file_hash)
           SELECT k, t, 'present', s, now(), h
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS x(k, t, s, h)
           ON CONFLICT (key) DO UPDATE SET state = 'present', size = excluded.size,
               present_at = coalesce(objects.present_at, excluded.present_at),
               file_hash = coalesce(excluded.file_hash, objects.file_hash)""",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )


async def touch_import_roots(conn: Connection, hashes: Sequence[str], last_pushed_at: datetime) -> None:
    """Make imported paths roots as if pushed at ``last_pushed_at``; an existing root is left as it is."""
    await conn.execute(
        """INSERT INTO roots (hash, first_pushed_at, last_pushed_at, last_session)
           SELECT h, now(), $2, NULL FROM unnest($1::text[]) AS x(h)
           ON CONFLICT (hash) DO NOTHING""",
        list(hashes),
        last_pushed_at,
    )


def root_time(now: datetime, ttl: timedelta, older_than: timedelta) -> datetime:
    """The ``last_pushed_at`` that makes a root expire ``ttl`` from ``now`` under a retention of ``older_than``."""
    return now + ttl - older_than


async def upsert_pins(conn: Connection, pins: Sequence[tuple[str, str]], created_by: str) -> None:
    """``(name, hash)`` pins, created or moved (``niks3 pin`` semantics)."""
    await conn.execute(
        """INSERT INTO pins (name, hash, created_at, updated_at, created_by)
           SELECT n, h, now(), now(), $3 FROM unnest($1::text[], $2::text[]) AS x(n, h)
           ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, updated_at = now()
           WHERE pins.hash <> excluded.hash""",
        [n for n, _ in pins],
        [h for _, h in pins],
        created_by,
    )


async def adopt_untracked(conn: Connection, objects: Sequence[tuple[str, str, int, datetime]]) -> int:
    """Give untracked ``(key, kind, size, last_modified)`` objects pending rows dated by their LastModified, as
    the collector's orphan phase does (docs/gc.md): the next run deletes them under its usual locks."""
    status: str = await conn.execute(
        """INSERT INTO objects (key, kind, state, size, created_at)
           SELECT k, t, 'pending', s, m
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) AS x(k, t, s, m)
           WHERE object_key_kind(k) = t
           ON CONFLICT (key) DO NOTHING""",
        [o[0] for o in objects],
        [o[1] for o in objects],
        [o[2] for o in objects],
        [o[3] for o in objects],
    )
    return int(status.rsplit(maxsplit=1)[-1])


async def narinfos_unsigned_by(
    conn: Connection, key_names: Sequence[str], after: str, limit: int
) -> list[tuple[str, str]]:
    """``(hash, narinfo)`` of published paths after ``after`` (in hash order) that lack a ``Sig:`` by one of
    ``key_names``: what ``--resign`` still has to sign."""
    rows = await conn.fetch(
        """SELECT hash, narinfo FROM store_paths
           WHERE hash > $1
             AND EXISTS (SELECT 1 FROM unnest($2::text[]) AS k(name)
                         WHERE strpos(E'\\n' || narinfo, E'\\nSig: ' || k.name || ':') = 0)
           ORDER BY hash LIMIT $3""",
        after,
        list(key_names),
        limit,
    )
    return [(r["hash"], r["narinfo"]) for r in rows]


async def replace_narinfos(conn: Connection, rows: Sequence[tuple[str, str]]) -> None:
    """New bytes for published narinfos (re-signed): the row and the narinfo object's size."""
    await conn.execute(
        """UPDATE store_paths s SET narinfo = x.narinfo FROM unnest($1::text[], $2::text[]) AS x(hash, narinfo)
           WHERE s.hash = x.hash""",
        [h for h, _ in rows],
        [n for _, n in rows],
    )
    await conn.execute(
        """UPDATE objects o SET size = x.size FROM unnest($1::text[], $2::bigint[]) AS x(key, size)
           WHERE o.key = x.key""",
        [h + ".narinfo" for h, _ in rows],
        [len(n.encode()) for _, n in rows],
    )
