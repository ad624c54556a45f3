"""Streaming real store paths through hash + zstd into the real SeaweedFS: PUT and multipart (upload.py,
multipart.py). What is downloaded again must decompress to exactly ``nix-store --dump``."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import aiohttp
import pytest
import zstandard

from niks3d.client.models import ObjectSpec, PartUrl
from niks3d.client.multipart import MultipartUploader, PartUrls
from niks3d.client.narstream import NarMismatch, stream_nar
from niks3d.client.retry import RetryPolicy
from niks3d.client.spool import Spool
from niks3d.client.upload import PresignedRequest, UploadFailed, put_presigned
from niks3d.nix.hashes import format_sha256
from tests.client.storekit import build_fresh, corrupt, delete, path_info

pytestmark = [pytest.mark.nix, pytest.mark.s3]
POLICY = RetryPolicy(attempts=3, base=0.05, cap=0.1)
PART = 5 << 20  # S3's smallest part size


def _dump(path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.fixture
def s3(seaweed_server, s3_bucket):
    client = seaweed_server.client()
    yield client, s3_bucket.bucket
    client.close()


def _presigned_put(s3, key: str, expires: int = 600) -> PresignedRequest:
    client, bucket = s3
    params = {"Bucket": bucket, "Key": key, "ContentType": "application/x-nix-nar"}
    url = client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires)
    return PresignedRequest(url, "PUT", {"Content-Type": "application/x-nix-nar"})


def _get(s3, key: str) -> bytes:
    client, bucket = s3
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.parametrize("memory_limit", [64 << 20, 4096], ids=["in-memory", "spooled-to-disk"])
@pytest.mark.parametrize("fixture", ["prototest", "tricky", "large"])
async def test_put_uploads_exactly_the_compressed_nar(nix_fixtures, s3, fixture, memory_limit):
    path = getattr(nix_fixtures, fixture)
    info = await path_info(path)
    async with aiohttp.ClientSession() as http:
        with Spool(memory_limit) as spool:
            outcome = await asyncio.to_thread(stream_nar, info, Path(path), spool.write, threads=2)
            assert spool.on_disk == (memory_limit < spool.size)
            await put_presigned(
                http, _presigned_put(s3, "nar/x.nar.zst"), spool.body, spool.size, what=path, policy=POLICY
            )
    stored = _get(s3, "nar/x.nar.zst")
    assert len(stored) == outcome.file_size
    assert format_sha256(hashlib.sha256(stored).digest()) == outcome.file_hash
    assert _unzstd(stored) == _dump(path)


async def test_an_expired_url_is_renewed_once(nix_fixtures, s3):
    info = await path_info(nix_fixtures.prototest)
    renewed: list[bool] = []

    async def refresh() -> PresignedRequest:
        renewed.append(True)
        return _presigned_put(s3, "renewed")

    async with aiohttp.ClientSession() as http:
        with Spool() as spool:
            await asyncio.to_thread(stream_nar, info, Path(nix_fixtures.prototest), spool.write)
            expired = _presigned_put(s3, "renewed", expires=1)
            await asyncio.sleep(2)
            await put_presigned(http, expired, spool.body, spool.size, what="x", policy=POLICY, refresh=refresh)
            with pytest.raises(UploadFailed, match="upload of x failed with HTTP 403"):
                await put_presigned(http, expired, spool.body, spool.size, what="x", policy=POLICY)
    assert renewed == [True]
    assert _unzstd(_get(s3, "renewed")) == _dump(nix_fixtures.prototest)


def _multipart(s3, key: str, initial: int):
    client, bucket = s3
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    asked: list[list[int]] = []

    def part(n: int) -> PartUrl:
        params = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": n}
        return PartUrl(part_number=n, url=client.generate_presigned_url("upload_part", Params=params, ExpiresIn=600))

    async def more(numbers: list[int]) -> list[PartUrl]:
        asked.append(numbers)
        return [part(n) for n in numbers]

    spec = ObjectSpec(
        kind="nar",
        key=key,
        action="multipart",
        upload_id=upload_id,
        part_size=PART,
        parts=[part(n) for n in range(1, initial + 1)],
    )
    return spec, PartUrls(spec.parts, more, 10_000), asked


def _complete(s3, spec: ObjectSpec) -> list[dict]:
    client, bucket = s3
    parts = client.list_parts(Bucket=bucket, Key=spec.key, UploadId=spec.upload_id).get("Parts", [])
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=spec.key,
        UploadId=spec.upload_id,
        MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]},
    )
    return parts


@pytest.fixture
def big_path(tmp_path):
    """18 MiB of random data in a fresh store path: four 5 MiB parts after compression."""
    path = build_fresh(tmp_path, "multipart-test", "mkdir $out; head -c 18874368 /dev/urandom > $out/blob")
    yield path
    delete(path)


async def test_multipart_streams_parts_asking_for_more_urls(s3, big_path):
    info = await path_info(big_path)
    spec, urls, asked = _multipart(s3, "nar/big.nar.zst", initial=1)
    sent: list[int] = []
    async with aiohttp.ClientSession() as http:
        uploader = MultipartUploader(http, spec, urls, what="big", policy=POLICY, in_flight=2, on_uploaded=sent.append)
        outcome = await uploader.run(
            lambda sink, cancel: stream_nar(info, Path(big_path), sink, threads=2, cancel=cancel)
        )
    parts = _complete(s3, spec)
    assert [p["Size"] for p in parts[:-1]] == [PART] * (len(parts) - 1)
    assert len(parts) == uploader.parts_uploaded == -(-outcome.file_size // PART) == 4
    assert asked and asked[0][0] == 2  # part 1 came with the session, the rest were asked for
    assert sum(sent) == outcome.file_size
    stored = _get(s3, spec.key)
    assert format_sha256(hashlib.sha256(stored).digest()) == outcome.file_hash
    assert _unzstd(stored) == _dump(big_path)


async def test_a_corrupt_path_fails_the_multipart_upload_before_anything_is_reported(s3, big_path):
    info = await path_info(big_path)
    blob = Path(big_path) / "blob"
    corrupt(big_path, "blob", blob.read_bytes()[:-1] + b"\0")  # one byte differs, at the very end
    spec, urls, _ = _multipart(s3, "nar/corrupt.nar.zst", initial=8)
    async with aiohttp.ClientSession() as http:
        uploader = MultipartUploader(http, spec, urls, what="corrupt", policy=POLICY, in_flight=2)
        with pytest.raises(NarMismatch, match=f"refusing to push {big_path}"):
            await uploader.run(lambda sink, cancel: stream_nar(info, Path(big_path), sink, cancel=cancel))
    client, bucket = s3
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="nar/corrupt")  # never completed
