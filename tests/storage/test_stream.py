"""Bucket.open_stream of a whole object: a presigned GET on the plain session (the NAR reads of verification and
of listings, docs/security.md rules 1 and 8), through botocore for any answer but 200; a body that ends before its
Content-Length is an error, never a short object."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from niks3d.errors import ObjectNotFound, StorageError
from niks3d.storage import Bucket
from niks3d.storage.models import ObjectInfo
from niks3d.storage.stream import ObjectStream, PlainBody

pytestmark = pytest.mark.s3


def _count_botocore_gets(bucket: Bucket) -> list[str]:
    calls: list[str] = []
    client = bucket._client
    get_object = client.get_object

    async def counting(**params: Any) -> Any:
        calls.append(params["Key"])
        return await get_object(**params)

    client.get_object = counting  # type: ignore[method-assign]
    return calls


async def test_a_whole_object_streams_through_the_plain_session(bucket: Bucket) -> None:
    body = bytes(range(256)) * 4000  # several chunks
    await bucket.put("nar/x y+z.nar.zst", body, content_type="application/x-nix-nar", content_encoding="zstd")
    gets = _count_botocore_gets(bucket)
    async with await bucket.open_stream("nar/x y+z.nar.zst") as stream:
        assert isinstance(stream._body, PlainBody)
        chunks = [chunk async for chunk in stream]
    assert b"".join(chunks) == body
    assert stream.status == 200 and stream.content_length == len(body)
    info = stream.info
    assert (info.size, info.content_type, info.content_encoding) == (len(body), "application/x-nix-nar", "zstd")
    assert await bucket.get("nar/x y+z.nar.zst") == body
    assert gets == []  # both answered on the plain session


async def test_a_missing_object_is_object_not_found_through_botocore(bucket: Bucket) -> None:
    gets = _count_botocore_gets(bucket)
    with pytest.raises(ObjectNotFound):
        await bucket.open_stream("nar/absent.nar.zst")
    assert gets == ["nar/absent.nar.zst"]  # the presigned GET's 404 was asked again, for its error


async def test_a_range_goes_through_botocore(bucket: Bucket) -> None:
    await bucket.put("r", b"0123456789", content_type="text/plain")
    gets = _count_botocore_gets(bucket)
    async with await bucket.open_stream("r", byte_range=(2, 4)) as stream:
        assert await stream.read() == b"234"
    assert gets == ["r"]


@pytest.mark.parametrize("whole", [True, False], ids=["read", "chunks"])
async def test_a_body_that_ends_early_is_a_storage_error(whole: bool) -> None:
    """A server that promises 1,000 bytes and closes the connection after 400 (a real aiohttp server)."""

    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 400)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/short", short)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.get(f"http://127.0.0.1:{port}/short")
            info = ObjectInfo(key="short", size=1000, etag="", last_modified=None)  # type: ignore[arg-type]
            stream = ObjectStream(
                bucket="b",
                info=info,
                status=200,
                content_length=1000,
                content_range=None,
                body=PlainBody(response, 1000),
                chunk_size=100,
            )
            with pytest.raises(StorageError):
                async with stream:
                    if whole:
                        await stream.read()
                    else:
                        async for _ in stream:
                            pass
    finally:
        await runner.cleanup()
