"""Migrations on a real PostgreSQL (order, idempotence, the lock, refusals) and the pool (ping, errors)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

import niks3d.db
from niks3d.config import DatabaseSettings
from niks3d.db.migrate import MIGRATION_LOCK_KEY, Migration, check_schema, load_migrations, migrate
from niks3d.db.pool import create_pool, describe_target, open_pool, ping
from niks3d.errors import DatabaseError
from niks3d.logsetup import JsonFormatter, event_fields

pytestmark = pytest.mark.postgres

TABLES = {
    "objects",
    "store_paths",
    "path_references",
    "path_files",
    "roots",
    "pins",
    "upload_sessions",
    "session_claims",
    "claim_caps",
    "upstream_paths",
    "upstream_references",
    "nar_facts",
    "root_members",
    "gc_runs",
    "maintenance_runs",
}


def steps(*sqls: str) -> list[Migration]:
    """Test migrations 0001_step1, 0002_step2, ... with the given SQL."""
    return [Migration.from_file(f"{n:04d}_step{n}.sql", sql.encode()) for n, sql in enumerate(sqls, start=1)]


def closed_port() -> int:
    """A loopback port nobody listens on (bound and released, so the kernel refuses connections to it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def db_settings(database_dsn: str) -> DatabaseSettings:
    return DatabaseSettings(url=database_dsn, pool_min_size=1, pool_max_size=4, connect_timeout=10)


@pytest.fixture
async def pool(db_settings: DatabaseSettings) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(db_settings, None) as opened:
        yield opened


async def applied_versions(pool: asyncpg.Pool) -> list[tuple[int, str, str]]:
    rows = await pool.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


# --- the packaged migrations -------------------------------------------------------------------------------


def test_packaged_migrations_are_numbered_from_one_and_checksummed() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].label == "0001_initial"
    directory = Path(niks3d.db.__file__).parent / "migrations"
    for migration in migrations:
        data = (directory / f"{migration.label}.sql").read_bytes()
        assert migration.checksum == hashlib.sha256(data).hexdigest()
        assert migration.sql == data.decode()
    assert sorted(p.name for p in directory.glob("*.sql")) == [f"{m.label}.sql" for m in migrations]


@pytest.mark.parametrize("filename", ["1_initial.sql", "0000_zero.sql", "0001_Initial.sql", "0001-x.sql"])
def test_badly_named_migration_files_are_refused(filename: str) -> None:
    with pytest.raises(DatabaseError, match=rf"migration file '{filename}' is not named NNNN_name.sql"):
        Migration.from_file(filename, b"SELECT 1;")


async def test_a_gap_in_the_numbering_is_refused(pool: asyncpg.Pool) -> None:
    one, _, three = steps("SELECT 1", "SELECT 2", "SELECT 3")
    with pytest.raises(DatabaseError, match=r"without gaps; found 0001_step1, 0003_step3"):
        await migrate(pool, migrations=[one, three])
    assert await pool.fetchval("SELECT to_regclass('schema_migrations')") is None


# --- applying ----------------------------------------------------------------------------------------------


async def test_migrations_apply_on_an_empty_database(pool: asyncpg.Pool) -> None:
    with pytest.raises(DatabaseError, match=r"no niks3d schema .*run `niks3d migrate`"):
        await check_schema(pool)

    applied = await migrate(pool)

    assert applied == [m.label for m in load_migrations()]
    assert await applied_versions(pool) == [(m.version, m.name, m.checksum) for m in load_migrations()]
    tables = {r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == TABLES | {"schema_migrations"}
    await check_schema(pool)


async def test_a_second_run_applies_nothing(pool: asyncpg.Pool) -> None:
    first = await migrate(pool)
    before = await applied_versions(pool)
    assert await migrate(pool) == []
    assert first
    assert await applied_versions(pool) == before


async def test_a_new_migration_applies_on_top_of_earlier_ones(pool: asyncpg.Pool) -> None:
    both = steps("CREATE TABLE t (x int)", "ALTER TABLE t ADD COLUMN y int")
    assert await migrate(pool, migrations=both[:1]) == ["0001_step1"]
    with pytest.raises(DatabaseError, match=r"1 migration\(s\) not applied \(0002_step2\): run `niks3d migrate`"):
        await check_schema(pool, migrations=both)
    assert await migrate(pool, migrations=both) == ["0002_step2"]
    await check_schema(pool, migrations=both)
    assert await pool.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_name = 't'") == 2


async def test_a_failing_migration_is_rolled_back_whole_and_releases_the_lock(pool: asyncpg.Pool) -> None:
    migrations = steps("CREATE TABLE kept (x int)", "CREATE TABLE half_done (x int); SELECT 1 / 0;")

    with pytest.raises(DatabaseError, match=r"migration 0002_step2 failed and was rolled back: division by zero"):
        await migrate(pool, migrations=migrations)

    assert [v for v, _, _ in await applied_versions(pool)] == [1]
    assert await pool.fetchval("SELECT to_regclass('kept')") is not None
    assert await pool.fetchval("SELECT to_regclass('half_done')") is None
    assert await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


# --- concurrency -------------------------------------------------------------------------------------------


async def test_concurrent_migrations_apply_each_migration_once(db_settings: DatabaseSettings) -> None:
    async with open_pool(db_settings, None) as first, open_pool(db_settings, None) as second:
        results = await asyncio.gather(migrate(first), migrate(second))
        labels = [m.label for m in load_migrations()]
        assert sorted(results, key=len) == [[], labels]
        assert [v for v, _, _ in await applied_versions(first)] == [m.version for m in load_migrations()]


async def test_the_lock_serializes_slow_migrations_across_pools(db_settings: DatabaseSettings) -> None:
    # Each migration appends to a log; without the lock, several pools would append twice (or fail).
    migrations = steps(
        "CREATE TABLE applied_log (step int); INSERT INTO applied_log VALUES (1); SELECT pg_sleep(0.2);",
        "INSERT INTO applied_log VALUES (2); SELECT pg_sleep(0.2);",
    )
    async with (
        open_pool(db_settings, None) as a,
        open_pool(db_settings, None) as b,
        open_pool(db_settings, None) as c,
    ):
        results = await asyncio.gather(*(migrate(p, migrations=migrations) for p in (a, b, c)))
        assert sorted(label for result in results for label in result) == ["0001_step1", "0002_step2"]
        assert [r["step"] for r in await a.fetch("SELECT step FROM applied_log ORDER BY step")] == [1, 2]


async def test_migrate_waits_while_another_process_holds_the_lock(pool: asyncpg.Pool, database_dsn: str) -> None:
    other = await asyncpg.connect(database_dsn)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        task = asyncio.create_task(migrate(pool))
        await asyncio.sleep(0.5)
        assert not task.done(), "migrate() ran although another session held the migration lock"
        await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        assert await asyncio.wait_for(task, 30) == [m.label for m in load_migrations()]
    finally:
        await other.close()


# --- refusals ----------------------------------------------------------------------------------------------


async def test_a_tampered_checksum_is_refused(pool: asyncpg.Pool) -> None:
    await migrate(pool)
    await pool.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    expected = (
        r"migration 0001_initial was applied to the database with checksum 0{64}, but this niks3d's file has "
        rf"checksum {load_migrations()[0].checksum}: the migration was changed after it was applied"
    )
    with pytest.raises(DatabaseError, match=expected):
        await migrate(pool)
    with pytest.raises(DatabaseError, match=expected):
        await check_schema(pool)


async def test_a_migration_file_changed_after_it_was_applied_is_refused(pool: asyncpg.Pool) -> None:
    await migrate(pool, migrations=steps("CREATE TABLE t (x int)", "SELECT 1"))
    changed = steps("CREATE TABLE t (x bigint)", "SELECT 1", "CREATE TABLE never (x int)")
    with pytest.raises(DatabaseError, match=r"migration 0001_step1 was applied .* was changed after"):
        await migrate(pool, migrations=changed)
    assert await pool.fetchval("SELECT to_regclass('never')") is None


async def test_a_database_migrated_by_a_newer_niks3d_is_refused(pool: asyncpg.Pool) -> None:
    await migrate(pool)
    await pool.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')")
    latest = load_migrations()[-1].label
    expected = (
        r"the database has migration 9999_from_the_future \(applied \d{4}-\d\d-\d\d [0-9:]+ UTC\), "
        rf"which this niks3d does not know \(its latest is {latest}\): a newer niks3d migrated this database"
    )
    with pytest.raises(DatabaseError, match=expected):
        await migrate(pool)
    with pytest.raises(DatabaseError, match=expected):
        await check_schema(pool)


async def test_an_older_niks3d_refuses_a_database_a_newer_one_migrated(pool: asyncpg.Pool) -> None:
    newer = steps("CREATE TABLE t (x int)", "CREATE TABLE u (x int)")
    await migrate(pool, migrations=newer)
    with pytest.raises(
        DatabaseError, match=r"0002_step2 .* which this niks3d does not know \(its latest is 0001_step1\)"
    ):
        await migrate(pool, migrations=newer[:1])
    assert [v for v, _, _ in await applied_versions(pool)] == [1, 2]


async def test_a_missing_middle_migration_is_refused(pool: asyncpg.Pool) -> None:
    migrations = steps("SELECT 1", "SELECT 2", "SELECT 3")
    await migrate(pool, migrations=migrations)
    await pool.execute("DELETE FROM schema_migrations WHERE version = 2")
    with pytest.raises(DatabaseError, match=r"0002_step2 was never applied although later ones were"):
        await migrate(pool, migrations=migrations)


# --- the pool ----------------------------------------------------------------------------------------------


async def test_pool_connections_name_niks3d_and_decode_json(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_setting('application_name')") == "niks3d"
        assert await conn.fetchval("""SELECT '{"a": [1, "b"]}'::jsonb""") == {"a": [1, "b"]}
        assert await conn.fetchval("""SELECT '[1, 2]'::json""") == [1, 2]
        assert await conn.fetchval("SELECT $1::jsonb -> 'k'", {"k": {"n": 3}}) == {"n": 3}


async def test_ping_is_true_while_the_server_answers(pool: asyncpg.Pool) -> None:
    assert await ping(pool, 5.0) is True


async def test_open_pool_closes_the_pool_at_the_end(db_settings: DatabaseSettings) -> None:
    async with open_pool(db_settings, None) as opened:
        assert await ping(opened, 5.0)
    assert opened.is_closing()
    assert await ping(opened, 1.0) is False


async def test_ping_is_false_quickly_for_a_closed_port() -> None:
    pool = await asyncpg.create_pool(f"postgresql://niks3@127.0.0.1:{closed_port()}/niks3", min_size=0)
    try:
        started = time.monotonic()
        assert await ping(pool, 5.0) is False
        assert time.monotonic() - started < 2.0
    finally:
        await pool.close()


async def test_ping_gives_up_at_its_timeout_when_the_server_never_answers() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept the connection, never say anything

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = await asyncpg.create_pool(f"postgresql://niks3@127.0.0.1:{port}/niks3", min_size=0, timeout=60)
    try:
        started = time.monotonic()
        assert await ping(pool, 0.5) is False
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 2.0
        assert writers, "ping never reached the server"
    finally:
        pool.terminate()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_connection_errors_name_the_target_but_never_the_password() -> None:
    port = closed_port()
    settings = DatabaseSettings(url=f"postgresql://niks3@127.0.0.1:{port}/cache", connect_timeout=5)
    with pytest.raises(DatabaseError) as caught:
        await create_pool(settings, "hunter2-very-secret")
    message = str(caught.value)
    assert message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port} (database cache, user niks3): ")
    assert "hunter2" not in message


async def test_connection_errors_name_the_socket(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"postgresql:///cache?host={tmp_path}", connect_timeout=5)
    with pytest.raises(DatabaseError, match=rf"cannot connect to PostgreSQL at socket {tmp_path}/\.s\.PGSQL\.5432"):
        await create_pool(settings, None)


async def test_a_refused_login_is_a_database_error(database_dsn: str) -> None:
    parts = urlsplit(database_dsn)
    url = parts._replace(path="/no_such_database").geturl()
    settings = DatabaseSettings(url=url, pool_min_size=0, connect_timeout=5)
    with pytest.raises(DatabaseError, match=r"cannot connect to PostgreSQL at .*database no_such_database.*"):
        await create_pool(settings, None)


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("postgresql:///niks3?host=/run/postgresql", "socket /run/postgresql/.s.PGSQL.5432 (database niks3)"),
        ("postgresql://u:pw@db.example:5433/x", "db.example:5433 (database x, user u)"),
        ("postgresql://[::1]/x?port=6000", "[::1]:6000 (database x)"),
        ("postgresql://h1:1,h2/db", "h1:1, h2:5432 (database db)"),
        ("postgresql://%2Ftmp%2Fpg/db", "socket /tmp/pg/.s.PGSQL.5432 (database db)"),
        ("postgresql:///db", "the default socket (PGHOST, or /run/postgresql) (database db)"),
    ],
)
def test_describe_target_names_hosts_sockets_and_never_a_password(url: str, described: str) -> None:
    assert describe_target(url) == described


async def test_connecting_and_migrating_log_their_fields_where_the_journal_and_json_read_them(
    db_settings: DatabaseSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="niks3d.db")
    async with open_pool(db_settings, None) as pool:
        await migrate(pool)
    events = [r for r in caplog.records if hasattr(r, "event")]
    # Fields passed as extra={...} beside "fields" never reached event_fields() (the journal) nor JSON lines.
    connected = next(r for r in events if r.event == "db.connected")
    assert event_fields("db.connected", connected.fields) == {"NIKS3_EVENT": "db.connected", "NIKS3_POOL_MAX_SIZE": "4"}
    migration = next(r for r in events if r.event == "db.migration")
    assert event_fields("db.migration", migration.fields)["NIKS3_VERSION"] == "1"
    assert json.loads(JsonFormatter().format(migration))["fields"] == {"version": 1}
