"""Request bodies sent without a copy (niks3d/storage/body.py): what botocore and aiohttp read of them, and that
S3 (SeaweedFS) stores exactly the bytes, refuses a body that is not the one signed, and gets the whole body again
when botocore retries."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import aiohttp
import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from niks3d.config import S3Settings
from niks3d.errors import StorageError
from niks3d.storage import Bucket, open_bucket
from niks3d.storage.body import PIECE, BufferBody

BIG = 3 * PIECE + 12345  # several slices, the last one short


def test_reads_seeks_and_length_see_the_buffer() -> None:
    data = bytearray(os.urandom(1000))
    body = BufferBody(data)
    assert len(body) == 1000 and body.tell() == 0
    assert bytes(body.read(10)) == data[:10] and body.tell() == 10
    assert bytes(body.read()) == data[10:] and body.read(5) == b""
    assert body.seek(-3, io.SEEK_END) == 997 and bytes(body.read(100)) == data[997:]
    assert body.seek(5) == 5 and body.seek(2, io.SEEK_CUR) == 7 and bytes(body.read(1)) == data[7:8]
    assert body.seek(5000) == 1000 and body.seek(-5000) == 0


def test_reads_share_the_buffer_instead_of_copying_it() -> None:
    data = bytearray(b"abcdef")
    piece = BufferBody(data).read(3)
    assert isinstance(piece, memoryview) and piece.obj is data


async def test_slices_from_the_position_cover_the_body_once() -> None:
    data = os.urandom(BIG)
    body = BufferBody(memoryview(data))
    pieces = [bytes(p) async for p in body]
    assert b"".join(pieces) == data and max(map(len, pieces)) == PIECE
    body.seek(PIECE + 1)
    assert b"".join([bytes(p) async for p in body]) == data[PIECE + 1 :]


@pytest.mark.s3
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
async def test_put_of_any_buffer_stores_every_byte(bucket: Bucket, kind: type) -> None:
    data = os.urandom(BIG)
    await bucket.put("body/put", kind(data), content_type="application/octet-stream")
    assert await bucket.get("body/put") == data
    await bucket.put("body/empty", kind(b""), content_type="application/octet-stream")
    assert await bucket.get("body/empty") == b""


@pytest.mark.s3
async def test_parts_uploaded_from_buffers_assemble_to_the_object(bucket: Bucket) -> None:
    first, second = os.urandom(5 << 20), os.urandom(BIG)
    upload = await bucket.create_multipart("body/multi", content_type="application/octet-stream")
    buffer = bytearray(first)
    parts = [await bucket.upload_part("body/multi", upload, 1, buffer)]
    parts.append(await bucket.upload_part("body/multi", upload, 2, memoryview(second)))
    assert [p.size for p in parts] == [len(first), len(second)]
    await bucket.complete_multipart("body/multi", upload, parts)
    assert await bucket.get("body/multi") == first + second


async def test_a_retried_put_and_part_send_the_whole_body_again(s3_settings: S3Settings) -> None:
    """botocore rewinds the body before it retries: an S3 server that fails the first attempt after reading
    part of the body gets every byte on the second (aiohttp stands in for S3 here)."""
    received: list[bytes] = []

    async def put(request: web.Request) -> web.Response:
        if not received:
            received.append(await request.content.read(1000))
            error = "<Error><Code>InternalError</Code><Message>try again</Message></Error>"
            return web.Response(status=500, text=error, content_type="application/xml")
        received.append(await request.read())
        return web.Response(headers={"ETag": '"0123456789abcdef0123456789abcdef"'})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_put("/{tail:.*}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}", "max_attempts": 3})
    data = os.urandom(BIG)
    try:
        async with open_bucket(settings, "AKIDTEST", "secret") as fake:
            await fake.put("body/retried", bytearray(data), content_type="application/octet-stream")
            assert len(received) == 2 and received[1] == data
            received.clear()
            part = await fake.upload_part("body/retried", "upload-1", 1, memoryview(data))
            assert len(received) == 2 and received[1] == data and part.size == len(data)
    finally:
        await runner.cleanup()


@pytest.mark.s3
async def test_a_put_whose_body_is_not_its_sha256_is_refused_and_stores_nothing(bucket: Bucket) -> None:
    """PutObject carries x-amz-checksum-sha256 (given by the caller, or computed), which S3 checks."""
    body = os.urandom(BIG)
    with pytest.raises(StorageError, match="PutObject of 'body/wrong'"):
        await bucket.put("body/wrong", body, content_type="application/octet-stream", sha256=bytes(32))
    assert await bucket.head("body/wrong") is None
    await bucket.put("body/right", body, content_type="application/octet-stream", sha256=hashlib.sha256(body).digest())
    assert await bucket.get("body/right") == body


@pytest.mark.s3
async def test_seaweedfs_does_not_check_the_payload_hash_of_the_signature(bucket: Bucket, s3_bucket) -> None:
    """Why PutObject carries x-amz-checksum-sha256 and UploadPart Content-MD5: SeaweedFS stores a body other than
    the one whose SHA-256 was signed (AWS and Garage refuse it; docs/storage.md, "Checksums")."""
    signed, sent = b"the signed body", b"another body!!!"
    url = f"{bucket.endpoint_url}/{bucket.name}/body/forged"
    request = AWSRequest(method="PUT", url=url, data=signed, headers={"Content-Type": "application/octet-stream"})
    credentials = Credentials(s3_bucket.access_key_id, s3_bucket.secret_access_key)
    S3SigV4Auth(credentials, "s3", s3_bucket.region).add_auth(request)
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    async with aiohttp.ClientSession() as http, http.put(url, data=sent, headers=headers) as forged:
        assert forged.status == 200
    assert await bucket.get("body/forged") == sent


@pytest.mark.s3
async def test_seaweedfs_checks_the_content_md5_of_a_part(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """upload_part sends Content-MD5, and S3 refuses a part whose bytes changed after it was computed (the
    signature is computed over the changed bytes, so only the MD5 can catch it on SeaweedFS)."""
    data = bytearray(os.urandom(5 << 20))
    upload = await bucket.create_multipart("body/md5", content_type="application/octet-stream")
    upload_part = bucket._client.upload_part
    sent: list[str] = []

    async def corrupted(**params: object) -> object:
        sent.append(str(params.get("ContentMD5")))
        changed = bytearray(data)
        changed[12345] ^= 1
        return await upload_part(**{**params, "Body": BufferBody(changed)})

    monkeypatch.setattr(bucket._client, "upload_part", corrupted)
    with pytest.raises(StorageError, match="UploadPart of 'body/md5'"):
        await bucket.upload_part("body/md5", upload, 1, data)
    assert sent == [base64.b64encode(hashlib.md5(data).digest()).decode()]
    monkeypatch.undo()
    part = await bucket.upload_part("body/md5", upload, 1, data)
    await bucket.complete_multipart("body/md5", upload, [part])
    assert await bucket.get("body/md5") == data
