"""The throwaway PostgreSQL: up in seconds, answers SQL on TCP and its Unix socket, cleans up after itself."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from niks3d.devenv.postgres import async_postgres_server, postgres_server
from niks3d.errors import ServiceError
from tests.devenv.procs import alive, descendants, user_of

pytestmark = pytest.mark.postgres

STARTUP_BUDGET = 20.0  # seconds; it takes about one on a laptop


async def test_postgres_starts_in_seconds_and_answers_sql_on_tcp_and_unix_socket(
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    async with async_postgres_server() as pg:
        elapsed = time.monotonic() - started
        record_property("postgres_startup_seconds", round(elapsed, 2))
        print(f"PostgreSQL started in {elapsed:.2f}s")
        assert elapsed < STARTUP_BUDGET
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        tcp = await asyncpg.connect(pg.dsn)
        try:
            await tcp.execute("CREATE TABLE t (n int)")
            await tcp.execute("INSERT INTO t VALUES (1), (2)")
            assert await tcp.fetchval("SELECT sum(n) FROM t") == 3
            assert await tcp.fetchval("SHOW fsync") == "off"
            assert await tcp.fetchval("SHOW server_encoding") == "UTF8"
        finally:
            await tcp.close()
        unix = await asyncpg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", database="postgres")
        try:
            assert await unix.fetchval("SELECT count(*) FROM t") == 2
            assert await unix.fetchval("SELECT inet_server_addr()") is None  # really the Unix socket
        finally:
            await unix.close()


async def test_create_database_gives_a_fresh_database_and_drop_database_removes_it_while_in_use() -> None:
    async with async_postgres_server() as pg:
        dsn = pg.create_database("niks3 test")
        assert dsn.endswith("/niks3%20test")
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT current_database()") == "niks3 test"
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        pg.drop_database("niks3 test")  # with a connection still open
        assert conn.is_closed() or not await _answers(conn)
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(dsn)
        pg.drop_database("niks3 test")  # dropping what is gone is fine
        with pytest.raises(ServiceError, match="already exists"):
            pg.create_database("postgres")


async def test_pids_cover_the_backends_that_leave_the_process_group() -> None:
    async with async_postgres_server() as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            assert os.getpgid(backend) != pg.pid  # killpg on the postmaster would not reach it
            pids = pg.pids()
            assert pids[0] == pg.pid and backend in pids
        finally:
            await conn.close()


async def _answers(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


def test_postgres_leaves_no_process_or_directory_when_the_body_raises(tmp_path: Path) -> None:
    base = tmp_path / "pg"  # under pytest's 0700 directory: as root the server's files must move elsewhere
    with pytest.raises(RuntimeError, match="boom"), postgres_server(base) as pg:
        real_dir = pg.base_dir
        members = {pg.pid} | descendants(pg.pid)
        assert len(members) > 1  # the postmaster and its background processes
        assert base.resolve() == real_dir.resolve()
        raise RuntimeError("boom")
    assert not [pid for pid in members if alive(pid)]
    assert not real_dir.exists()
    assert not base.exists() and not base.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has to hand the server to another user")
def test_postgres_as_root_runs_as_an_unprivileged_user() -> None:
    with postgres_server() as pg:
        assert user_of(pg.pid) != 0
        assert pg.data_dir.stat().st_uid == user_of(pg.pid)


def test_keep_leaves_the_stopped_cluster_behind() -> None:
    with postgres_server(keep=True) as pg:
        pid = pg.pid
        pg.create_database("kept")
    try:
        assert not alive(pid)
        assert (pg.data_dir / "PG_VERSION").read_text().strip().isdigit()
        assert pg.log_path.exists()
    finally:
        shutil.rmtree(pg.base_dir)


def test_postgres_that_cannot_start_raises_service_error_with_its_log(tmp_path: Path) -> None:
    base = tmp_path / "bad"
    with pytest.raises(ServiceError) as info, postgres_server(base, settings={"shared_buffers": "lots"}):
        pytest.fail("the body must not run")
    message = str(info.value)
    assert "postgres exited with status" in message
    assert 'invalid value for parameter "shared_buffers": "lots"' in message
    assert not base.exists() and not base.is_symlink()


def test_a_non_empty_base_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious").write_text("keep me")
    refused = pytest.raises(ServiceError, match="busy already exists and is not an empty directory")
    with refused, postgres_server(tmp_path / "busy"):
        pytest.fail("the body must not run")
    assert (tmp_path / "busy" / "precious").read_text() == "keep me"


@pytest.mark.parametrize("run", [1, 2])
async def test_database_dsn_is_a_fresh_database_for_each_test(database_dsn: str, run: int) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        # The second run would fail here if the database of the first were handed out again.
        await conn.execute("CREATE TABLE only_once (run int)")
        await conn.execute("INSERT INTO only_once VALUES ($1)", run)
    finally:
        await conn.close()
