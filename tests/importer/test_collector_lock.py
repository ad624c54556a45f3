"""``niks3d import`` and ``niks3d fsck`` hold the collector's lock for their whole run: while a GC run (or
another import or check) holds it, each refuses at once with a message, and runs once it is free."""

from __future__ import annotations

import asyncpg
import pytest

from niks3d.db.gc.runs import GC_LOCK_KEY
from tests.importer.importkit import niks3d

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


async def test_import_and_fsck_refuse_while_the_collectors_lock_is_held(start_daemon) -> None:
    daemon = start_daemon()
    holder = await asyncpg.connect(daemon.dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", GC_LOCK_KEY)
        for command in ("import", "fsck"):
            code, report, out = niks3d(daemon.config_path, command)
            assert code == 1, out
            assert report is None, report
            assert "a garbage collection, import or check is running" in out, out
            assert "Traceback" not in out, out
        await holder.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)
        for command in ("import", "fsck"):
            code, report, out = niks3d(daemon.config_path, command)
            assert code == 0, out
            assert report is not None and report["state"] == "finished", report
    finally:
        await holder.close()
