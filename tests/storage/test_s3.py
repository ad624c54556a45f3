"""Object reads, writes, streams, listing and batch deletes against a real SeaweedFS bucket."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from niks3d.config import S3Settings
from niks3d.errors import ObjectNotFound, StorageError
from niks3d.storage import Bucket, RangeNotSatisfiable, open_bucket

pytestmark = pytest.mark.s3


async def test_check_passes_for_an_existing_bucket(bucket: Bucket):
    await bucket.check()


async def test_check_names_a_missing_bucket(s3_settings: S3Settings, s3_bucket):
    settings = s3_settings.model_copy(update={"bucket": "no-such-bucket-here"})
    async with open_bucket(settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as missing:
        with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-here' at http.* does not exist"):
            await missing.check()


async def test_put_then_head_and_get_return_what_was_written(bucket: Bucket):
    body = b"StorePath: /nix/store/x\n" * 10
    await bucket.put(
        "abc.narinfo",
        body,
        content_type="text/x-nix-narinfo",
        content_encoding="identity",
        cache_control="max-age=60",
    )
    info = await bucket.head("abc.narinfo")
    assert info is not None
    assert info.key == "abc.narinfo"
    assert info.size == len(body)
    assert info.etag == hashlib.md5(body).hexdigest()
    assert info.content_type == "text/x-nix-narinfo"
    assert info.content_encoding == "identity"
    assert info.last_modified.tzinfo is not None
    assert await bucket.get("abc.narinfo") == body


async def test_put_overwrites_an_existing_key(bucket: Bucket):
    await bucket.put("k", b"one", content_type="text/plain")
    await bucket.put("k", b"two!", content_type="application/json")
    info = await bucket.head("k")
    assert info is not None
    assert (info.size, info.content_type) == (4, "application/json")
    assert await bucket.get("k") == b"two!"


async def test_a_small_put_goes_without_botocore_and_s3_still_checks_its_sha256(bucket: Bucket, monkeypatch):
    body = b"StorePath: /nix/store/x\n" * 10
    put_object = bucket._client.put_object
    through_botocore: list[str] = []

    async def counted(**kwargs):
        through_botocore.append(kwargs["Key"])
        return await put_object(**kwargs)

    monkeypatch.setattr(bucket._client, "put_object", counted)
    await bucket.put("q.narinfo", body, content_type="text/x-nix-narinfo", cache_control="max-age=60")
    info = await bucket.head("q.narinfo")
    assert info is not None
    assert (info.size, info.content_type) == (len(body), "text/x-nix-narinfo")
    assert await bucket.get("q.narinfo") == body
    assert through_botocore == []
    # A body that is not what its SHA-256 says: S3 refuses it on the quick path, and again through botocore.
    with pytest.raises(StorageError):
        await bucket.put("bad.narinfo", body, content_type="text/plain", sha256=hashlib.sha256(b"other").digest())
    assert through_botocore == ["bad.narinfo"]
    assert await bucket.head("bad.narinfo") is None


async def test_head_of_an_absent_key_is_none(bucket: Bucket):
    assert await bucket.head("nar/absent.nar.zst") is None


async def test_the_quick_head_answers_what_botocore_answers(bucket: Bucket, seaweed_server, s3_bucket, monkeypatch):
    body = b"x" * 1234
    await bucket.put("log/x.drv", body, content_type="text/plain; charset=utf-8", content_encoding="zstd")

    async def no_botocore(**kwargs):
        raise AssertionError("the quick path should have answered")

    monkeypatch.setattr(bucket._client, "head_object", no_botocore)
    quick = await bucket.head("log/x.drv")
    assert await bucket.head("log/absent") is None
    direct = seaweed_server.client().head_object(Bucket=s3_bucket.bucket, Key="log/x.drv")
    assert quick is not None
    assert quick.size == direct["ContentLength"] == len(body)
    assert quick.etag == direct["ETag"].strip('"')
    assert quick.last_modified == direct["LastModified"]
    assert quick.content_type == direct["ContentType"]
    assert quick.content_encoding == direct["ContentEncoding"] == "zstd"


async def test_a_head_that_cannot_connect_goes_through_botocore_from_then_on(bucket: Bucket):
    await bucket.put("k", b"abc", content_type="text/plain")
    # A session that can never connect: every connection is bound to an address this machine does not have.
    unreachable = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("192.0.2.1", 0)))
    bucket._http = unreachable
    try:
        info = await bucket.head("k")
        assert info is not None
        assert info.size == 3
        assert bucket._http is None
        assert await bucket.head("absent") is None
    finally:
        await unreachable.close()


async def test_get_many_reads_small_and_large_objects_without_botocore(bucket: Bucket, monkeypatch):
    """Small objects in one presigned GET each; a larger one is streamed (Bucket.get), also on the plain session."""
    small, large = b"StorePath: x\n" * 20, bytes(range(256)) * 40
    await bucket.put("a.narinfo", small, content_type="text/x-nix-narinfo", content_encoding="zstd")
    await bucket.put("b.ls", large, content_type="application/json")
    through_botocore: list[str] = []
    get_object = bucket._client.get_object

    async def counted(**kwargs):
        through_botocore.append(kwargs["Key"])
        return await get_object(**kwargs)

    monkeypatch.setattr(bucket._client, "get_object", counted)
    got = await bucket.get_many(["a.narinfo", "absent.narinfo", "b.ls"], small=len(large) - 1)
    assert got == {"a.narinfo": small, "absent.narinfo": None, "b.ls": large}
    assert through_botocore == []


async def test_get_many_with_wrong_credentials_fails_as_botocore_names_it(s3_settings: S3Settings, s3_bucket):
    async with open_bucket(s3_settings, s3_bucket.access_key_id, "not-the-secret") as wrong:
        with pytest.raises(StorageError) as caught:
            await wrong.get_many(["a.narinfo"])
    assert not isinstance(caught.value, ObjectNotFound)


async def test_get_of_an_absent_key_raises_object_not_found_naming_it(bucket: Bucket):
    with pytest.raises(ObjectNotFound, match=r"nar/absent\.nar\.zst") as caught:
        await bucket.get("nar/absent.nar.zst")
    assert caught.value.key == "nar/absent.nar.zst"


async def test_open_stream_of_an_absent_key_raises_before_any_body(bucket: Bucket):
    with pytest.raises(ObjectNotFound):
        await bucket.open_stream("log/absent.drv")


async def test_stream_of_the_whole_object_yields_every_byte(bucket: Bucket):
    body = bytes(range(256)) * 4096  # 1 MiB, several chunks
    await bucket.put("nar/big.nar.zst", body, content_type="application/zstd", content_encoding="zstd")
    stream = await bucket.open_stream("nar/big.nar.zst")
    async with stream:
        assert stream.status == 200
        assert stream.content_length == len(body)
        assert stream.content_range is None
        assert stream.info.size == len(body)
        assert stream.info.content_encoding == "zstd"
        chunks = [chunk async for chunk in stream]
    assert len(chunks) > 1
    assert b"".join(chunks) == body


async def test_stream_of_a_range_yields_exactly_those_bytes(bucket: Bucket):
    body = bytes(range(256)) * 16
    await bucket.put("r", body, content_type="application/octet-stream")
    async with await bucket.open_stream("r", byte_range=(10, 19)) as stream:
        assert stream.status == 206
        assert stream.content_length == 10
        assert stream.content_range == f"bytes 10-19/{len(body)}"
        assert stream.info.size == len(body)
        assert b"".join([c async for c in stream]) == body[10:20]
    async with await bucket.open_stream("r", byte_range=(4000, None)) as stream:
        assert await stream.read() == body[4000:]
    async with await bucket.open_stream("r", byte_range=(-5, None)) as stream:
        assert await stream.read() == body[-5:]


async def test_a_stream_closed_early_gives_its_connection_back(s3_settings: S3Settings, s3_bucket, bucket: Bucket):
    body = b"x" * (2 * 1024 * 1024)
    await bucket.put("partial", body, content_type="application/octet-stream")
    async with open_bucket(
        s3_settings, s3_bucket.access_key_id, s3_bucket.secret_access_key, max_pool_connections=1
    ) as single:
        async with asyncio.timeout(20):  # a leaked connection would leave the next request waiting forever
            for _ in range(3):
                async with await single.open_stream("partial") as stream:
                    async for _chunk in stream:
                        break
            assert await single.get("partial") == body


async def test_range_past_the_end_raises_range_not_satisfiable_with_the_size(bucket: Bucket):
    await bucket.put("short", b"12345", content_type="text/plain")
    with pytest.raises(RangeNotSatisfiable, match="short") as caught:
        await bucket.open_stream("short", byte_range=(100, 200))
    assert caught.value.size == 5


async def _put_many(bucket: Bucket, keys: list[str]) -> None:
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await bucket.put(key, key.encode(), content_type="text/plain")

    await asyncio.gather(*(put(k) for k in keys))


async def test_listing_and_batch_delete_cover_more_than_one_page(bucket: Bucket):
    keys = [f"nar/{i:05d}.nar.zst" for i in range(2500)]
    await _put_many(bucket, [*keys, "other/keep"])

    listed = [info.key async for info in bucket.iter_objects("nar/")]
    assert listed == keys  # three pages of 1000, in key order, prefix respected
    small_pages = [info async for info in bucket.iter_objects("nar/0000", page_size=3)]
    assert [i.key for i in small_pages] == keys[:10]
    assert all(i.size == len(i.key) and i.etag for i in small_pages)

    absent = [f"nar/absent-{i}" for i in range(20)]
    result = await bucket.delete_many([*keys, *absent, keys[0]])
    assert result.errors == []
    assert sorted(result.deleted) == sorted([*keys, *absent])
    assert [info.key async for info in bucket.iter_objects("nar/")] == []
    assert [info.key async for info in bucket.iter_objects()] == ["other/keep"]


async def test_delete_many_of_nothing_sends_nothing(bucket: Bucket):
    result = await bucket.delete_many([])
    assert (result.deleted, result.errors) == ([], [])
