"""``niks3d serve --no-migrate`` (what the NixOS module runs after its ExecStartPre ``niks3d migrate``): the
migrations run once per start, and a daemon that finds the schema not migrated refuses to start."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from tests.fixtures.daemon import niks3d_argv, wait_ready


def _serve(daemon: Any, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            niks3d_argv("serve", *extra, "--config", str(daemon.config_path)), stdout=out, stderr=subprocess.STDOUT
        )


async def _tables(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        return count
    finally:
        await conn.close()


def test_serve_no_migrate_checks_the_schema_and_never_applies_a_migration(
    make_daemon_config: Any, tmp_path: Path
) -> None:
    daemon = make_daemon_config()
    refused = _serve(daemon, tmp_path / "refused.log", "--no-migrate")
    assert refused.wait(60) != 0
    assert "run `niks3d migrate`" in (tmp_path / "refused.log").read_text()
    assert asyncio.run(_tables(daemon.dsn)) == 0

    migrate = subprocess.run(
        niks3d_argv("migrate", "--config", str(daemon.config_path)), capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    daemon.log_path = tmp_path / "serve.log"
    daemon.process = _serve(daemon, daemon.log_path, "--no-migrate")
    try:
        wait_ready(daemon)
    finally:
        daemon.stop()
    assert "migration" not in daemon.log(), daemon.log()


def test_the_nixos_module_migrates_in_exec_start_pre_and_serves_without_migrating() -> None:
    module = (Path(__file__).resolve().parents[2] / "nix" / "module.nix").read_text()
    assert 'ExecStartPre = "${niks3d} migrate --config ${configFile}";' in module
    assert 'ExecStart = "${niks3d} serve --no-migrate --config ${configFile}";' in module
