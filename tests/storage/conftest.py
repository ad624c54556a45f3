"""Fixtures for the storage tests: S3Settings and an open Bucket for the per-test SeaweedFS bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from niks3d.config import S3Settings
from niks3d.storage import Bucket, open_bucket


@pytest.fixture
def s3_settings(s3_bucket) -> S3Settings:
    return S3Settings(
        bucket=s3_bucket.bucket,
        endpoint_url=s3_bucket.endpoint_url,
        region=s3_bucket.region,
        max_attempts=3,
    )


@pytest.fixture
async def bucket(s3_settings: S3Settings, s3_bucket) -> AsyncIterator[Bucket]:
    async with open_bucket(s3_settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as opened:
        yield opened
