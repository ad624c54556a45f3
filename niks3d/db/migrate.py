"""Versioned schema migrations, applied in order under a PostgreSQL advisory lock.

The migrations are the package files ``niks3d/db/migrations/NNNN_name.sql``, numbered from 0001 without gaps.
:func:`migrate` applies the ones a database lacks, each in its own transaction together with its row in
``schema_migrations``, while holding a session-level advisory lock, so that several replicas starting at once
apply each migration exactly once (the others wait, then find nothing to do). It refuses to touch a database
that a newer niks3d migrated (a version this code does not know) or whose applied migrations differ from the
files here (checksum). :func:`check_schema` asks the same questions without changing anything.
"""

from __future__ import annotations

__all__ = ["MIGRATION_LOCK_KEY", "Migration", "check_schema", "load_migrations", "migrate"]

import functools
import hashlib
import importlib.resources
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from niks3d.db.pool import DbPool
from niks3d.errors import DatabaseError
from niks3d.logsetup import log_event

logger = logging.getLogger(__name__)

# The advisory lock that serializes migrations: the bytes "niks3dmg" as a big-endian bigint. Other niks3d
# advisory locks must use other keys (docs/database.md lists them).
MIGRATION_LOCK_KEY = 0x6E696B7333646D67

_FILE_RE = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration: its number, its name, the SQL and the sha256 (hex) of the file's bytes."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        """``0001_initial``: the file name without ``.sql``."""
        return f"{self.version:04d}_{self.name}"

    @classmethod
    def from_file(cls, filename: str, data: bytes) -> Migration:
        """Build a migration from a file name ``NNNN_name.sql`` and the file's bytes."""
        match = _FILE_RE.fullmatch(filename)
        if match is None or int(match["version"]) == 0:
            raise DatabaseError(
                f"migration file {filename!r} is not named NNNN_name.sql (NNNN from 0001, name in [a-z0-9_])"
            )
        try:
            sql = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatabaseError(f"migration file {filename!r} is not UTF-8: {exc}") from exc
        return cls(int(match["version"]), match["name"], sql, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class _Applied:
    version: int
    name: str
    checksum: str
    applied_at: datetime

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def _check_sequence(migrations: Sequence[Migration], where: str) -> tuple[Migration, ...]:
    """Sort ``migrations`` and check that they are numbered 1, 2, 3, ... without gaps or repeats."""
    ordered = tuple(sorted(migrations, key=lambda m: m.version))
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            found = ", ".join(m.label for m in ordered)
            raise DatabaseError(f"{where}: migrations must be numbered 0001, 0002, ... without gaps; found {found}")
    return ordered


@functools.cache
def load_migrations() -> tuple[Migration, ...]:
    """The migrations shipped in ``niks3d/db/migrations``, in order."""
    directory = importlib.resources.files("niks3d.db").joinpath("migrations")
    migrations = [
        Migration.from_file(entry.name, entry.read_bytes())
        for entry in directory.iterdir()
        if entry.name.endswith(".sql")
    ]
    return _check_sequence(migrations, "niks3d/db/migrations")


def _plan(known: Sequence[Migration], applied: Sequence[_Applied]) -> list[Migration]:
    """The migrations to apply, in order; raise DatabaseError if the database does not fit this code."""
    by_version = {m.version: m for m in known}
    latest = known[-1].label if known else "none"
    for row in applied:
        migration = by_version.get(row.version)
        if migration is None:
            raise DatabaseError(
                f"the database has migration {row.label} (applied {row.applied_at:%Y-%m-%d %H:%M:%S %Z}), "
                f"which this niks3d does not know (its latest is {latest}): a newer niks3d migrated this "
                "database; run that version, or restore a backup taken before the upgrade"
            )
        if row.checksum != migration.checksum:
            raise DatabaseError(
                f"migration {migration.label} was applied to the database with checksum {row.checksum}, "
                f"but this niks3d's file has checksum {migration.checksum}: the migration was changed after "
                "it was applied; refusing to run against a schema that may differ from what this code expects"
            )
    done = {row.version for row in applied}
    pending = [m for m in known if m.version not in done]
    if pending and done and pending[0].version < max(done):
        raise DatabaseError(
            f"migration {pending[0].label} was never applied although later ones were "
            f"({', '.join(row.label for row in applied)}): the schema_migrations table was changed by hand"
        )
    return pending


async def _applied(conn: Any) -> list[_Applied]:
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
    return [_Applied(r["version"], r["name"], r["checksum"], r["applied_at"]) for r in rows]


async def _lock(conn: Any) -> None:
    """Take the migration lock on ``conn``'s session, saying so in the log if another process holds it."""
    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
        return
    logger.info("another niks3d is migrating the database; waiting for it to finish")
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)


async def _unlock(conn: Any) -> None:
    # If the connection broke, the server already released the lock with the session; asyncpg's reset on
    # release also runs pg_advisory_unlock_all(). So a failure here only deserves a log line.
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        logger.warning("could not release the migration lock: %s", exc)


async def migrate(pool: DbPool, *, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the migrations the database lacks; return their labels (``["0001_initial"]``), or ``[]``.

    ``migrations`` replaces the packaged ones (for tests). Raises DatabaseError if the database was migrated
    by a newer niks3d, if an applied migration differs from this code's, or if a migration fails (that
    migration is rolled back as a whole; the ones before it stay applied).
    """
    known = load_migrations() if migrations is None else _check_sequence(migrations, "migrations")
    applied_now: list[str] = []
    try:
        async with pool.acquire() as conn:
            await _lock(conn)
            try:
                await conn.execute(_CREATE_TABLE)
                for migration in _plan(known, await _applied(conn)):
                    await _apply(conn, migration)
                    applied_now.append(migration.label)
            finally:
                await _unlock(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"migrating the database failed: {exc}") from exc
    if not applied_now:
        logger.info("database schema is up to date (%s)", known[-1].label if known else "no migrations")
    return applied_now


async def _apply(conn: Any, migration: Migration) -> None:
    log_event(logger, logging.INFO, "db.migration", "applying migration %s", migration.label, version=migration.version)
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"migration {migration.label} failed and was rolled back: {exc}") from exc


async def check_schema(pool: DbPool, *, migrations: Sequence[Migration] | None = None) -> None:
    """Raise DatabaseError unless the database has exactly this code's migrations, all applied."""
    known = load_migrations() if migrations is None else _check_sequence(migrations, "migrations")
    try:
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
                raise DatabaseError(
                    "the database has no niks3d schema (no schema_migrations table): run `niks3d migrate`"
                )
            applied = await _applied(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"checking the database schema failed: {exc}") from exc
    pending = _plan(known, applied)
    if pending:
        raise DatabaseError(
            f"the database schema is not up to date: {len(pending)} migration(s) not applied "
            f"({', '.join(m.label for m in pending)}): run `niks3d migrate`"
        )
