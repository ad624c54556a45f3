"""Queries on published store paths: lookups, the publication transaction's inserts, roots and pins."""

from __future__ import annotations

__all__ = [
    "PinRow",
    "PublishedPath",
    "count_roots_before",
    "delete_pin",
    "drop_roots_before",
    "get_pin",
    "insert_published",
    "list_pins",
    "lock_published",
    "narinfo_by_hash",
    "path_name",
    "published_by",
    "published_hashes",
    "published_names",
    "published_names_and_logs",
    "touch_roots",
    "upsert_pin",
]

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Connection

from niks3d.db.batch import batches


@dataclass(frozen=True, slots=True)
class PublishedPath:
    """One row of ``store_paths`` to insert, with its references and per-path files."""

    hash: str
    name: str
    nar_hash: str
    nar_size: int
    nar_key: str
    narinfo_key: str
    compression: str
    file_hash: str
    file_size: int
    deriver: str | None
    ca: str | None
    narinfo: str
    references: tuple[str, ...]  # hash parts of references published here (or in the same publication)
    files: tuple[tuple[str, str], ...]  # (key, kind) of ls / log / realisation objects
    # hash parts of references proven upstream (niks3d/db/upstream.py inserts their rows)
    upstream_references: tuple[str, ...] = ()
    published_by: str | None = None  # the identity that published it (None: imported)


@dataclass(frozen=True, slots=True)
class PinRow:
    name: str
    path: str
    created_at: datetime
    updated_at: datetime
    created_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "created_by": self.created_by,
        }


async def published_hashes(conn: Connection, hashes: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for batch in batches(list(hashes)):  # db/batch.py: a push of 100,000 paths asks for all of them
        rows = await conn.fetch("SELECT hash FROM store_paths WHERE hash = ANY($1::text[])", list(batch))
        found.update(r["hash"] for r in rows)
    return found


async def lock_published(conn: Connection, hashes: Sequence[str]) -> set[str]:
    """The hashes among ``hashes`` that are published, their rows locked ``FOR KEY SHARE`` in hash order until the
    end of the transaction: GC's sweep locks a row ``FOR UPDATE`` before it deletes it (db/gc/sweep.py), so it waits
    for this transaction and then sees what it recorded (a root), or this one waits for the sweep and does not see
    the paths it deleted."""
    found: set[str] = set()
    for batch in batches(sorted(hashes)):  # in hash order, as the sweep's locks
        rows = await conn.fetch(
            "SELECT hash FROM store_paths WHERE hash = ANY($1::text[]) ORDER BY hash FOR KEY SHARE", list(batch)
        )
        found.update(r["hash"] for r in rows)
    return found


async def published_names(conn: Connection, hashes: Sequence[str]) -> dict[str, str]:
    """hash part -> name of the published paths among ``hashes``."""
    names: dict[str, str] = {}
    for batch in batches(list(hashes)):
        rows = await conn.fetch("SELECT hash, name FROM store_paths WHERE hash = ANY($1::text[])", list(batch))
        names.update((r["hash"], r["name"]) for r in rows)
    return names


async def published_names_and_logs(
    conn: Connection, hashes: Sequence[str], logs: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str | None]]:
    """:func:`published_names`, in the same statement as whether the log of each published path of ``logs`` (hash
    part -> log key) is present without its proof: then hash part -> the identity that published the path (None:
    unknown). Without ``logs``, the plain statement of :func:`published_names`."""
    if not logs:
        return await published_names(conn, hashes), {}
    names: dict[str, str] = {}
    unproven: dict[str, str | None] = {}
    for batch in batches(list(hashes)):
        mine = [h for h in batch if h in logs]
        rows = await conn.fetch(
            """SELECT s.hash, s.name, s.published_by, o.key IS NOT NULL AS unproven FROM store_paths s
               LEFT JOIN unnest($2::text[], $3::text[]) AS l(hash, key) ON l.hash = s.hash
               LEFT JOIN objects o ON o.key = l.key AND o.kind = 'log' AND o.state = 'present' AND NOT o.proven
               WHERE s.hash = ANY($1::text[])""",
            list(batch),
            mine,
            [logs[h] for h in mine],
        )
        names.update((r["hash"], r["name"]) for r in rows)
        unproven.update((r["hash"], r["published_by"]) for r in rows if r["unproven"])
    return names, unproven


async def realisation_holders(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """realisation key -> the store path (``/nix/store/<hash>-<name>``) of the published path that holds it."""
    rows = await conn.fetch(
        """SELECT f.key, '/nix/store/' || s.hash || '-' || s.name AS path FROM path_files f
           JOIN store_paths s ON s.hash = f.hash WHERE f.key = ANY($1::text[]) AND f.kind = 'realisation'
           ORDER BY f.key, s.published_at""",
        list(keys),
    )
    holders: dict[str, str] = {}
    for r in rows:
        holders.setdefault(r["key"], r["path"])
    return holders


async def published_by(conn: Connection, hashes: Sequence[str]) -> dict[str, str | None]:
    """hash part -> the identity that published it (None: unknown), for the published paths among ``hashes``."""
    rows = await conn.fetch("SELECT hash, published_by FROM store_paths WHERE hash = ANY($1::text[])", list(hashes))
    return {r["hash"]: r["published_by"] for r in rows}


async def path_name(conn: Connection, hash_part: str) -> str | None:
    """The name of the published path with this hash part, or None."""
    value: str | None = await conn.fetchval("SELECT name FROM store_paths WHERE hash = $1", hash_part)
    return value


async def narinfo_by_hash(conn: Connection, hash_part: str) -> str | None:
    value: str | None = await conn.fetchval("SELECT narinfo FROM store_paths WHERE hash = $1", hash_part)
    return value


async def insert_published(conn: Connection, paths: Sequence[PublishedPath]) -> None:
    """Insert store paths, then their references and files; paths already present are left alone."""
    if not paths:
        return
    await conn.executemany(
        """INSERT INTO store_paths (hash, name, nar_hash, nar_size, nar_key, narinfo_key, compression,
                                    file_hash, file_size, deriver, ca, narinfo, published_at, published_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), $13)
           ON CONFLICT (hash) DO NOTHING""",
        [
            (
                p.hash,
                p.name,
                p.nar_hash,
                p.nar_size,
                p.nar_key,
                p.narinfo_key,
                p.compression,
                p.file_hash,
                p.file_size,
                p.deriver,
                p.ca,
                p.narinfo,
                p.published_by,
            )
            for p in paths
        ],
    )
    refs = [(p.hash, r) for p in paths for r in p.references]
    await conn.execute(
        """INSERT INTO path_references (referrer, reference)
           SELECT a, b FROM unnest($1::text[], $2::text[]) AS x(a, b) ON CONFLICT DO NOTHING""",
        [a for a, _ in refs],
        [b for _, b in refs],
    )
    files = [(p.hash, key, kind) for p in paths for key, kind in p.files]
    await conn.execute(
        """INSERT INTO path_files (hash, key, kind)
           SELECT a, b, c FROM unnest($1::text[], $2::text[], $3::text[]) AS x(a, b, c) ON CONFLICT DO NOTHING""",
        [a for a, _, _ in files],
        [b for _, b, _ in files],
        [c for _, _, c in files],
    )


async def touch_roots(conn: Connection, hashes: Iterable[str], session_id: Any) -> None:
    """Make ``hashes`` roots pushed now (a re-push renews a root's retention)."""
    await conn.execute(
        """INSERT INTO roots (hash, first_pushed_at, last_pushed_at, last_session)
           SELECT h, now(), now(), $2 FROM unnest($1::text[]) AS x(h)
           ON CONFLICT (hash) DO UPDATE SET last_pushed_at = now(), last_session = excluded.last_session""",
        list(hashes),
        session_id,
    )


async def drop_roots_before(conn: Connection, retention: datetime) -> int:
    """Delete the pushed roots last pushed at or before ``retention`` (GC's expiry); returns how many."""
    status: str = await conn.execute("DELETE FROM roots WHERE last_pushed_at <= $1", retention)
    return int(status.rsplit(" ", 1)[-1])


async def count_roots_before(conn: Connection, retention: datetime) -> int:
    """How many pushed roots :func:`drop_roots_before` would delete (a dry run's count)."""
    return int(await conn.fetchval("SELECT count(*) FROM roots WHERE last_pushed_at <= $1", retention))


def _pin(row: Any) -> PinRow:
    return PinRow(
        name=row["name"],
        path=f"/nix/store/{row['hash']}-{row['pname']}",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
    )


_PIN_SELECT = """SELECT p.name, p.hash, s.name AS pname, p.created_at, p.updated_at, p.created_by
                 FROM pins p JOIN store_paths s ON s.hash = p.hash"""


async def upsert_pin(conn: Connection, name: str, hash_part: str, created_by: str) -> PinRow:
    await conn.execute(
        """INSERT INTO pins (name, hash, created_at, updated_at, created_by) VALUES ($1, $2, now(), now(), $3)
           ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, updated_at = now()""",
        name,
        hash_part,
        created_by,
    )
    row = await conn.fetchrow(f"{_PIN_SELECT} WHERE p.name = $1", name)
    return _pin(row)


async def get_pin(conn: Connection, name: str) -> PinRow | None:
    row = await conn.fetchrow(f"{_PIN_SELECT} WHERE p.name = $1", name)
    return _pin(row) if row else None


async def list_pins(conn: Connection) -> list[PinRow]:
    return [_pin(r) for r in await conn.fetch(f"{_PIN_SELECT} ORDER BY p.name")]


async def delete_pin(conn: Connection, name: str) -> bool:
    result: str = await conn.execute("DELETE FROM pins WHERE name = $1", name)
    return result.endswith(" 1")
