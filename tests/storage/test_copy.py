"""Bucket.copy: the server-side copy of a staged upload into place (docs/security.md, rule 2), sent as a presigned
request on the plain session when the keys are static, through botocore otherwise or when that fails."""

from __future__ import annotations

from typing import Any

import pytest

from niks3d.errors import ObjectNotFound
from niks3d.storage import Bucket, open_bucket

pytestmark = pytest.mark.s3


def _count_botocore_copies(bucket: Bucket) -> list[str]:
    calls: list[str] = []
    client = bucket._client
    copy_object = client.copy_object

    async def counting(**params: Any) -> Any:
        calls.append(params["Key"])
        return await copy_object(**params)

    client.copy_object = counting  # type: ignore[method-assign]
    return calls


async def test_a_copy_sets_niks3ds_content_headers_without_botocore(bucket: Bucket) -> None:
    await bucket.put("staging/s/nar/a b+c.nar.zst", b"zstd bytes", content_type="text/plain", content_encoding="gzip")
    botocore_copies = _count_botocore_copies(bucket)
    await bucket.copy(
        "staging/s/nar/a b+c.nar.zst",
        "nar/a b+c.nar.zst",
        size=10,
        content_type="application/x-nix-nar",
        content_encoding="zstd",
    )
    info = await bucket.head("nar/a b+c.nar.zst")
    assert info is not None
    assert (info.size, info.content_type, info.content_encoding) == (10, "application/x-nix-nar", "zstd")
    assert await bucket.get("nar/a b+c.nar.zst") == b"zstd bytes"
    assert botocore_copies == []  # the presigned copy answered

    await bucket.copy("staging/s/nar/a b+c.nar.zst", "plain.ls", size=10, content_type="application/json")
    info = await bucket.head("plain.ls")
    assert info is not None and (info.content_type, info.content_encoding) == ("application/json", None)


async def test_a_missing_source_is_object_not_found_through_botocore(bucket: Bucket) -> None:
    botocore_copies = _count_botocore_copies(bucket)
    with pytest.raises(ObjectNotFound):
        await bucket.copy("staging/s/absent.ls", "absent.ls", size=1, content_type="application/json")
    assert botocore_copies == ["absent.ls"]  # the presigned copy's 404 was asked again, for its error
    assert await bucket.head("absent.ls") is None


async def test_without_static_keys_a_copy_goes_through_botocore(bucket: Bucket, s3_settings: Any, s3_bucket: Any):
    await bucket.put("staging/s/x.ls", b"{}", content_type="application/json")
    async with open_bucket(s3_settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as other:
        other._credentials = None  # as with the default credential chain
        botocore_copies = _count_botocore_copies(other)
        await other.copy("staging/s/x.ls", "x.ls", size=2, content_type="application/json")
    assert botocore_copies == ["x.ls"]
    assert await bucket.get("x.ls") == b"{}"
