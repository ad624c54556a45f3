"""Multipart uploads through presigned part URLs: list, complete (twice), abort, enumerate."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

import aiohttp
import pytest

from niks3d.errors import StorageError
from niks3d.storage import Bucket, PartInfo, UploadNotFound

pytestmark = pytest.mark.s3

MIB = 1024 * 1024


async def _upload_parts(bucket: Bucket, key: str, upload_id: str, pieces: list[bytes]) -> list[PartInfo]:
    """PUT each piece to its presigned part URL as a client would; returns the ETags S3 answered."""
    uploaded = []
    async with aiohttp.ClientSession() as http:
        for number, piece in enumerate(pieces, start=1):
            request = await bucket.presign_part(key, upload_id, number)
            assert request.method == "PUT"
            async with http.put(request.url, data=io.BytesIO(piece), headers=request.headers) as resp:
                assert resp.status == 200, await resp.text()
                uploaded.append(PartInfo(number, resp.headers["ETag"], len(piece)))
    return uploaded


def _multipart_etag(pieces: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in pieces)
    return f"{hashlib.md5(digests).hexdigest()}-{len(pieces)}"


async def test_multipart_upload_through_presigned_parts_assembles_the_object(bucket: Bucket):
    key = "nar/large.nar.zst"
    pieces = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(MIB + 17)]
    upload_id = await bucket.create_multipart(key, content_type="application/x-nix-nar")
    client_parts = await _upload_parts(bucket, key, upload_id, pieces)

    listed = await bucket.list_parts(key, upload_id)
    assert [(p.part_number, p.size) for p in listed] == [(1, 5 * MIB), (2, 5 * MIB), (3, MIB + 17)]
    assert [p.etag for p in listed] == [hashlib.md5(p).hexdigest() for p in pieces]
    assert [p.etag for p in listed] == [p.etag.strip('"') for p in client_parts]

    uploads = [u async for u in bucket.iter_multipart_uploads("nar/")]
    assert [(u.key, u.upload_id) for u in uploads] == [(key, upload_id)]
    assert uploads[0].initiated.tzinfo is not None

    await bucket.complete_multipart(key, upload_id)  # parts from list_parts

    info = await bucket.head(key)
    assert info is not None
    assert info.size == sum(len(p) for p in pieces)
    assert info.content_type == "application/x-nix-nar"
    assert info.etag == _multipart_etag(pieces)
    assert await bucket.get(key) == b"".join(pieces)
    assert [u async for u in bucket.iter_multipart_uploads()] == []

    # A retried complete (its first answer lost) succeeds again, with or without the part list.
    await bucket.complete_multipart(key, upload_id)
    await bucket.complete_multipart(key, upload_id, client_parts)
    # S3 may forget a completed upload id at once (SeaweedFS's ListParts does): the object under the key
    # is what tells that the upload was completed.
    await bucket.complete_multipart(key, "an-upload-id-s3-never-issued", client_parts)
    assert await bucket.get(key) == b"".join(pieces)


async def test_complete_with_the_parts_the_client_reported(bucket: Bucket):
    key = "nar/reported.nar.zst"
    pieces = [os.urandom(5 * MIB), b"tail"]
    upload_id = await bucket.create_multipart(key, content_type="application/x-nix-nar")
    client_parts = await _upload_parts(bucket, key, upload_id, pieces)
    # Reported out of order and with quoted ETags, as HTTP headers carry them.
    await bucket.complete_multipart(key, upload_id, list(reversed(client_parts)))
    assert await bucket.get(key) == b"".join(pieces)


async def test_completing_an_unknown_upload_of_an_absent_key_raises_upload_not_found(bucket: Bucket):
    with pytest.raises(UploadNotFound, match=r"nar/never\.nar\.zst") as caught:
        await bucket.complete_multipart("nar/never.nar.zst", "no-such-upload-id")
    assert caught.value.upload_id == "no-such-upload-id"
    with pytest.raises(UploadNotFound):
        await bucket.complete_multipart("nar/never.nar.zst", "no-such-upload-id", [PartInfo(1, "abc")])


async def test_an_upload_listing_no_parts_counts_as_completed_only_when_the_object_exists(bucket: Bucket):
    # What a second request sees while another completes the same upload on some S3 servers: the upload is
    # still known but its parts are gone. Without the object, there is nothing to complete.
    key = "nar/raced.nar.zst"
    upload_id = await bucket.create_multipart(key, content_type="application/x-nix-nar")
    with pytest.raises(StorageError, match=r"has no parts to complete"):
        await bucket.complete_multipart(key, upload_id)
    await bucket.put(key, b"assembled by the other request", content_type="application/x-nix-nar")
    await bucket.complete_multipart(key, upload_id)  # no error: the object is there
    assert await bucket.get(key) == b"assembled by the other request"
    await bucket.abort_multipart(key, upload_id)


async def test_abort_discards_the_upload_and_tolerates_repeats(bucket: Bucket):
    key = "nar/aborted.nar.zst"
    upload_id = await bucket.create_multipart(key, content_type="application/x-nix-nar")
    await _upload_parts(bucket, key, upload_id, [b"first part"])
    other = await bucket.create_multipart("nar/other.nar.zst", content_type="application/x-nix-nar")
    assert {u.upload_id async for u in bucket.iter_multipart_uploads()} == {upload_id, other}

    await bucket.abort_multipart(key, upload_id)

    assert [u.upload_id async for u in bucket.iter_multipart_uploads()] == [other]
    with pytest.raises(UploadNotFound):
        await bucket.list_parts(key, upload_id)
    with pytest.raises(UploadNotFound):
        await bucket.complete_multipart(key, upload_id)
    assert await bucket.head(key) is None
    await bucket.abort_multipart(key, upload_id)  # already gone: fine
    await bucket.abort_multipart(key, "never-existed")


async def test_multipart_listing_respects_the_prefix(bucket: Bucket):
    nar = await bucket.create_multipart("nar/a.nar.zst", content_type="application/x-nix-nar")
    await bucket.create_multipart("log/a.drv", content_type="text/plain")
    assert [u.upload_id async for u in bucket.iter_multipart_uploads("nar/")] == [nar]


async def test_presign_part_refuses_numbers_s3_does_not_accept(bucket: Bucket):
    for number in (0, 10_001):
        with pytest.raises(ValueError, match=str(number)):
            await bucket.presign_part("nar/a.nar.zst", "upload", number)


async def test_a_part_uploaded_twice_counts_once_with_its_latest_bytes(bucket: Bucket):
    """A resumed push uploads a part again; S3 servers may list both uploads, completion takes the newer."""
    key = "nar/" + "2" * 52 + ".nar.zst"
    upload_id = await bucket.create_multipart(key, content_type="application/x-nix-nar")
    first, second, tail = b"a" * (5 * 1024 * 1024), b"b" * (5 * 1024 * 1024), b"tail"
    async with aiohttp.ClientSession() as http:
        for number, body in ((1, first), (1, second), (2, tail)):
            if number == 1 and body is second:
                await asyncio.sleep(1.1)  # S3 timestamps have one-second resolution
            req = await bucket.presign_part(key, upload_id, number)
            async with http.put(req.url, data=io.BytesIO(body), headers=req.headers) as response:
                assert response.status == 200
    parts = await bucket.list_parts(key, upload_id)
    assert [p.part_number for p in parts] == [1, 2]
    assert parts[0].etag == hashlib.md5(second).hexdigest()
    await bucket.complete_multipart(key, upload_id)
    assert await bucket.get(key) == second + tail
