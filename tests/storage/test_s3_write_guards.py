"""What the S3 server under test (SeaweedFS) enforces of the mechanisms that could keep a presigned URL from
changing a published object (docs/security.md, "Why staging keys"). The daemon relies only on the first two
(server-side copies); the others are pinned so that the documented choice stays true to this server."""

from __future__ import annotations

import base64
import hashlib

import aiohttp
import pytest

pytestmark = [pytest.mark.s3]


async def _put(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.put(url, data=body, headers=headers) as r:
        await r.read()
        return r.status


async def test_copy_object_and_upload_part_copy_copy_server_side(bucket) -> None:
    await bucket.put("staging/a", b"x" * 100, content_type="application/octet-stream")
    client = bucket._client
    await client.copy_object(Bucket=bucket.name, Key="final/a", CopySource={"Bucket": bucket.name, "Key": "staging/a"})
    assert await bucket.get("final/a") == b"x" * 100
    big = bytes(range(256)) * (6 * 4096)  # 6 MiB: two parts of a copy
    await bucket.put("staging/big", big, content_type="application/octet-stream")
    upload = await client.create_multipart_upload(Bucket=bucket.name, Key="final/big")
    parts = []
    for n, (start, end) in enumerate([(0, 5 << 20), (5 << 20, len(big))], 1):
        part = await client.upload_part_copy(
            Bucket=bucket.name,
            Key="final/big",
            UploadId=upload["UploadId"],
            PartNumber=n,
            CopySource={"Bucket": bucket.name, "Key": "staging/big"},
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        parts.append({"PartNumber": n, "ETag": part["CopyPartResult"]["ETag"]})
    await client.complete_multipart_upload(
        Bucket=bucket.name, Key="final/big", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert await bucket.get("final/big") == big


async def test_seaweedfs_enforces_conditional_and_checksummed_presigned_puts(bucket) -> None:
    client = bucket._presigner
    body = b"published bytes"
    # If-None-Match: * signed into a presigned PUT
    url = await client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket.name, "Key": "cond", "IfNoneMatch": "*"}, ExpiresIn=600
    )
    first = await _put(url, body, {"If-None-Match": "*"})
    second = await _put(url, b"garbage bytes!!", {"If-None-Match": "*"})
    # x-amz-checksum-sha256 signed into a presigned PUT, then a different body
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    url = await client.generate_presigned_url(
        "put_object",
        Params={"Bucket": bucket.name, "Key": "sum", "ChecksumSHA256": digest},
        ExpiresIn=600,
    )
    good = await _put(url, body, {"x-amz-checksum-sha256": digest})
    bad = await _put(url, b"garbage bytes!!", {"x-amz-checksum-sha256": digest})
    # Content-MD5 signed, then a different body
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    url = await client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket.name, "Key": "md5", "ContentMD5": md5}, ExpiresIn=600
    )
    md5_good = await _put(url, body, {"Content-MD5": md5})
    md5_bad = await _put(url, b"garbage bytes!!", {"Content-MD5": md5})
    assert (first, second) == (200, 412)
    assert (good, bad) == (200, 400) and (md5_good, md5_bad) == (200, 400)
    for key in ("cond", "sum", "md5"):
        assert await bucket.get(key) == body
