"""``niks3d migrate [-c FILE]``: bring the database schema up to date, then exit.

The NixOS module runs it as the service's ``ExecStartPre``; several replicas may run it at once (the
migrations take an advisory lock). It prints one line per migration it applied, or that there was nothing
to do. Errors (unreachable database, a schema from a newer niks3d, a failed migration) are raised as
DatabaseError, which ``main()`` prints and turns into exit code 1.
"""

from __future__ import annotations

__all__ = ["migrate_command"]

import argparse
import asyncio

from niks3d.config import DatabaseSettings, load_config
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool


async def _migrate(settings: DatabaseSettings, password: str | None) -> list[str]:
    async with open_pool(settings, password) as pool:
        return await migrate(pool)


def migrate_command(args: argparse.Namespace) -> int:
    """Load the configuration at ``args.config``, migrate its database, print what was applied; return 0."""
    config = load_config(args.config)
    applied = asyncio.run(_migrate(config.settings.database, config.secrets.database_password))
    for label in applied:
        print(f"applied migration {label}")
    if not applied:
        print("the database schema is up to date; nothing to apply")
    return 0
