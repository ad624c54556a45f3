"""A SeaweedFS that stops answering (SIGSTOP): every bucket operation the daemon uses ends with a StorageError within
``s3.request_timeout``, every retry included (docs/configuration.md), however long ``read_timeout`` and
``max_attempts`` would let botocore or the presigned-request session wait.

The limits are chosen so that the difference shows without timing anything: ``request_timeout`` is 1 s while one
read may wait 30 s and botocore may try three times, and a call still waiting after :data:`HANG` seconds fails the
test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from niks3d.config import S3Settings
from niks3d.devenv.seaweedfs import SeaweedServer
from niks3d.errors import StorageError
from niks3d.storage import Bucket, open_bucket
from tests.fixtures.own import OWN_BUCKET
from tests.server.faultkit import frozen

pytestmark = pytest.mark.s3

HANG = 10.0  # far longer than request_timeout, far shorter than read_timeout
SMALL = b"small object\n"
LARGE = bytes(2 << 20)  # above the presigned-PUT limit: botocore's PutObject


def _settings(s3: SeaweedServer, **timeouts: Any) -> S3Settings:
    return S3Settings(bucket=OWN_BUCKET, endpoint_url=s3.endpoint_url, region=s3.region, **timeouts)


@pytest.fixture
async def patient_bucket(own_s3: SeaweedServer) -> AsyncIterator[Bucket]:
    """The bucket with ``request_timeout`` far below what one read and botocore's retries may take; its objects
    are written first with the default limits (a fresh SeaweedFS may take more than a second for the first)."""
    async with open_bucket(_settings(own_s3), own_s3.access_key_id, own_s3.secret_access_key) as setup:
        await setup.put("small", SMALL, content_type="text/plain")
        await setup.create_multipart("multi", content_type="application/octet-stream")
    patient = _settings(own_s3, connect_timeout=1.0, read_timeout=30.0, request_timeout=1.0, max_attempts=3)
    async with open_bucket(patient, own_s3.access_key_id, own_s3.secret_access_key) as bucket:
        yield bucket


async def _listed(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


def _operations(bucket: Bucket, upload_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "check": bucket.check,
        "head": lambda: bucket.head("small"),
        "get": lambda: bucket.get("small"),
        "get_many": lambda: bucket.get_many(["small"]),
        "open_stream": lambda: bucket.open_stream("small"),
        "put (presigned)": lambda: bucket.put("new-small", SMALL, content_type="text/plain"),
        "put (botocore)": lambda: bucket.put("new-large", LARGE, content_type="application/octet-stream"),
        "copy": lambda: bucket.copy("small", "copied", size=len(SMALL), content_type="text/plain"),
        "delete_many": lambda: bucket.delete_many(["small"]),
        "iter_objects": lambda: _listed(bucket.iter_objects("")),
        "create_multipart": lambda: bucket.create_multipart("parts", content_type="application/octet-stream"),
        "list_parts": lambda: bucket.list_parts("multi", upload_id),
        "abort_multipart": lambda: bucket.abort_multipart("multi", upload_id),
        "iter_multipart_uploads": lambda: _listed(bucket.iter_multipart_uploads("")),
    }


async def test_every_operation_on_a_frozen_s3_fails_within_the_request_timeout(
    own_s3: SeaweedServer, patient_bucket: Bucket
) -> None:
    [upload] = [u async for u in patient_bucket.iter_multipart_uploads("multi")]
    upload_id = upload.upload_id
    assert await patient_bucket.get("small") == SMALL  # S3 answers this bucket before the freeze

    async def outcome(operation: Callable[[], Awaitable[Any]]) -> str:
        try:
            async with asyncio.timeout(HANG):
                await operation()
        except TimeoutError:
            return "hung"
        except StorageError:
            return "failed"
        return "answered"

    with frozen(lambda: [own_s3.pid]):  # all at once: each must end by its own deadline
        operations = _operations(patient_bucket, upload_id)
        outcomes = dict(zip(operations, await asyncio.gather(*map(outcome, operations.values())), strict=True))
    hung = [name for name, what in outcomes.items() if what == "hung"]
    unbounded = [name for name, what in outcomes.items() if what == "answered"]
    assert not hung, f"still waiting after {HANG} s on a frozen S3 (request_timeout 1 s): {hung}"
    assert not unbounded, f"answered although S3 was frozen: {unbounded}"

    # And S3 answers again after SIGCONT.
    assert await patient_bucket.get("small") == SMALL
