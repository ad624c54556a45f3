"""uploads/report.py: the staged copies of a report's objects are found by one listing of the session's staging
keys, not one HEAD each (issue 18); the listing only confirms, so a missing object or one of another size is
still asked about with a HEAD and refused for the same reason as before."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from niks3d.config import S3Settings
from niks3d.db.uploads import Claim
from niks3d.nix.bucketkeys import staging_key
from niks3d.storage import Bucket, open_bucket
from niks3d.uploads.report import _LIST_FROM, _stage_all, _Staged
from niks3d.uploads.request import ObjectReport

pytestmark = pytest.mark.s3


@pytest.fixture
async def bucket(s3_bucket: Any) -> AsyncIterator[Bucket]:
    settings = S3Settings(bucket=s3_bucket.bucket, endpoint_url=s3_bucket.endpoint_url, region=s3_bucket.region)
    async with open_bucket(settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as opened:
        yield opened


def _keys(n: int) -> list[str]:
    return [f"{'abcdfghijklmnpqrsvwxyz0123456789'[i % 32] * 32}.ls" for i in range(n)]


async def test_one_listing_finds_the_staged_objects_and_heads_only_the_doubtful(bucket: Bucket) -> None:
    sid = uuid.uuid4()
    keys = _keys(_LIST_FROM + 4)
    short, absent = keys[3], keys[-1]
    for key in keys:
        if key != absent:
            await bucket.put(staging_key(str(sid), key), b"x" * (5 if key == short else 10), content_type="text/plain")
    # Another session's staged copy of the absent key, and an object of this session that was not reported:
    await bucket.put(staging_key(str(uuid.uuid4()), absent), b"x" * 10, content_type="text/plain")
    await bucket.put(staging_key(str(sid), "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.ls"), b"x", content_type="text/plain")
    heads: list[str] = []
    head = bucket.head

    async def counting_head(key: str) -> Any:
        heads.append(key)
        return await head(key)

    bucket.head = counting_head  # type: ignore[method-assign]
    items = [(ObjectReport(k, 10, None), Claim(k, True, None)) for k in keys]
    ctx: Any = SimpleNamespace(bucket=bucket)
    results = await _stage_all(ctx, SimpleNamespace(id=sid), items)  # type: ignore[arg-type]

    by_key = dict(zip(keys, results, strict=True))
    assert sorted(k for k, r in by_key.items() if isinstance(r, _Staged)) == sorted(set(keys) - {short, absent})
    assert all(r.size == 10 and not r.reset for r in results if isinstance(r, _Staged))
    assert "size mismatch: reported 10 bytes, the bucket has 5" in by_key[short]["reason"]  # type: ignore[index]
    assert by_key[absent]["reason"] == "not found in the bucket"  # type: ignore[index]
    assert sorted(heads) == sorted(staging_key(str(sid), k) for k in (short, absent))


async def test_a_small_report_heads_each_object(bucket: Bucket) -> None:
    sid = uuid.uuid4()
    keys = _keys(_LIST_FROM - 1)
    for key in keys:
        await bucket.put(staging_key(str(sid), key), b"x" * 10, content_type="text/plain")
    listed: list[str] = []
    iter_objects = bucket.iter_objects

    def counting_list(*args: Any, **kwargs: Any) -> Any:
        listed.append(args[0])
        return iter_objects(*args, **kwargs)

    bucket.iter_objects = counting_list  # type: ignore[method-assign]
    items = [(ObjectReport(k, 10, None), Claim(k, True, None)) for k in keys]
    ctx: Any = SimpleNamespace(bucket=bucket)
    results = await _stage_all(ctx, SimpleNamespace(id=sid), items)  # type: ignore[arg-type]
    assert all(isinstance(r, _Staged) for r in results)
    assert listed == []
