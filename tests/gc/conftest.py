"""Fixtures for the collector tests: a migrated database, an open bucket, a seeded cache and a GC context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from niks3d.config import DatabaseSettings, S3Settings
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool
from niks3d.gc import GcContext
from niks3d.storage import Bucket, open_bucket
from tests.gc.gckit import Cache, gc_context


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(DatabaseSettings(url=database_dsn, pool_max_size=12), None) as opened:
        await migrate(opened)
        yield opened


@pytest.fixture
async def bucket(s3_bucket: Any) -> AsyncIterator[Bucket]:
    settings = S3Settings(
        bucket=s3_bucket.bucket, endpoint_url=s3_bucket.endpoint_url, region=s3_bucket.region, max_attempts=3
    )
    async with open_bucket(settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as opened:
        yield opened


@pytest.fixture
def cache(pool: asyncpg.Pool, bucket: Bucket) -> Cache:
    return Cache(pool, bucket)


@pytest.fixture
def ctx(pool: asyncpg.Pool, bucket: Bucket) -> GcContext:
    return gc_context(pool, bucket)
