"""What the one-shot maintenance commands (``niks3d gc``, ``import``, ``fsck``) share: the database and the
bucket of a configuration opened together, and a run that SIGTERM cancels (systemd's stop, a timer's end), so
that the command can say it was stopped and exit 143."""

from __future__ import annotations

__all__ = ["open_stores", "until_sigterm"]

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from niks3d.config import Config, DatabaseSettings
from niks3d.db.pool import DbPool, open_pool
from niks3d.storage.s3 import Bucket, open_bucket

T = TypeVar("T")


@asynccontextmanager
async def open_stores(config: Config, database: DatabaseSettings | None = None) -> AsyncIterator[tuple[DbPool, Bucket]]:
    """The pool (of ``database``, by default the configured one) and the bucket of ``config``."""
    settings, secrets = config.settings, config.secrets
    async with (
        open_pool(database or settings.database, secrets.database_password) as pool,
        open_bucket(settings.s3, secrets.s3_access_key_id, secrets.s3_secret_access_key) as bucket,
    ):
        yield pool, bucket


async def until_sigterm(work: Awaitable[T]) -> T:
    """Await ``work`` in the current task; SIGTERM cancels it, and the CancelledError reaches ``asyncio.run``."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
