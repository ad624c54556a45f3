"""The throwaway SeaweedFS: an S3 server that behaves like the real thing for what niks3d needs.

Keys are checked, anonymous reads work only where allowed, presigned PUTs and multipart uploads through
presigned part URLs work with a plain HTTP client, and the server listens on loopback only and leaves no
process, directory or socket behind.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import botocore.exceptions
import pytest

from niks3d.devenv.seaweedfs import PARTS, async_seaweed_server, seaweed_server
from niks3d.errors import ServiceError
from tests.devenv.procs import alive, listening_addresses
from tests.fixtures.s3 import S3Bucket

pytestmark = pytest.mark.s3

STARTUP_BUDGET = 30.0  # seconds; it takes about three
MIB = 1024 * 1024


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_private_server_listens_on_loopback_only_and_refuses_anonymous_reads(
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    with seaweed_server(anonymous_read=False) as s3:
        elapsed = time.monotonic() - started
        record_property("seaweedfs_startup_seconds", round(elapsed, 2))
        print(f"SeaweedFS started in {elapsed:.2f}s")
        assert elapsed < STARTUP_BUDGET
        ours = set(s3.ports.values()) | set(s3.grpc_ports.values())
        assert len(ours) == 2 * len(PARTS)
        assert listening_addresses(s3.pid) == {("127.0.0.1", port) for port in ours}
        s3.create_bucket("private")
        s3.client().put_object(Bucket="private", Key="secret", Body=b"not for you")
        anonymous = s3.client(signature_version=botocore.UNSIGNED)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            anonymous.get_object(Bucket="private", Key="secret")
        assert _error_code(info.value) == (403, "AccessDenied")
        with pytest.raises(botocore.exceptions.ClientError) as info:
            anonymous.list_objects_v2(Bucket="private")
        assert _error_code(info.value)[0] == 403


async def test_server_leaves_no_process_directory_or_socket_behind_when_the_body_raises(
    tmp_path: Path,
) -> None:
    base = tmp_path / "s3"
    with pytest.raises(RuntimeError, match="boom"):
        async with async_seaweed_server(base) as s3:
            pid, real_dir = s3.pid, s3.base_dir
            sockets = [Path(f"/tmp/seaweedfs-{part}-grpc-{s3.grpc_ports[part]}.sock") for part in PARTS]
            assert any(path.is_socket() for path in sockets)  # weed made them, so the check below means something
            raise RuntimeError("boom")
    assert not alive(pid)
    assert not real_dir.exists() and not base.exists()
    assert [path for path in sockets if path.exists()] == []


def test_put_and_get_round_trip(seaweed_server: Any, s3_bucket: S3Bucket) -> None:
    client = seaweed_server.client()
    client.put_object(Bucket=s3_bucket.bucket, Key="nar/abc.nar.zst", Body=b"\x00bytes\xff")
    got = client.get_object(Bucket=s3_bucket.bucket, Key="nar/abc.nar.zst")
    assert got["Body"].read() == b"\x00bytes\xff"
    assert got["ContentLength"] == 7


def test_a_put_into_a_missing_bucket_fails(seaweed_server: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        seaweed_server.client().put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert _error_code(info.value) == (404, "NoSuchBucket")


@pytest.mark.parametrize(
    ("access_key", "secret_key", "code"),
    [(None, "wrong", "SignatureDoesNotMatch"), ("NIKS3DUNKNOWNKEY0000", None, "InvalidAccessKeyId")],
)
def test_wrong_keys_are_refused_with_403(
    seaweed_server: Any, s3_bucket: S3Bucket, access_key: str | None, secret_key: str | None, code: str
) -> None:
    client = seaweed_server.client()
    client.put_object(Bucket=s3_bucket.bucket, Key="k", Body=b"x")
    wrong = seaweed_server.client(access_key_id=access_key, secret_access_key=secret_key)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("get_object", {"Bucket": s3_bucket.bucket, "Key": "k"}),
        ("put_object", {"Bucket": s3_bucket.bucket, "Key": "k2", "Body": b"y"}),
        ("list_buckets", {}),
    ]
    for operation, params in calls:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            getattr(wrong, operation)(**params)
        assert _error_code(info.value) == (403, code)
    listed = client.list_objects_v2(Bucket=s3_bucket.bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["k"]


async def test_anonymous_reads_work_when_enabled_and_anonymous_writes_do_not(
    seaweed_server: Any, s3_bucket: S3Bucket
) -> None:
    seaweed_server.client().put_object(Bucket=s3_bucket.bucket, Key="nix-cache-info", Body=b"StoreDir: /nix/store\n")
    url = f"{s3_bucket.endpoint_url}/{s3_bucket.bucket}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/nix-cache-info") as response:
            assert response.status == 200
            assert await response.read() == b"StoreDir: /nix/store\n"
        async with http.get(f"{url}/missing.narinfo") as response:
            assert response.status == 404
        async with http.put(f"{url}/planted.narinfo", data=b"StorePath: /nix/store/x") as response:
            assert response.status == 403
    with pytest.raises(botocore.exceptions.ClientError):
        seaweed_server.client().head_object(Bucket=s3_bucket.bucket, Key="planted.narinfo")


async def test_a_presigned_put_uploads_with_a_plain_http_client(seaweed_server: Any, s3_bucket: S3Bucket) -> None:
    client = seaweed_server.client()
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": s3_bucket.bucket, "Key": "abc.narinfo"}, ExpiresIn=600
    )
    async with aiohttp.ClientSession() as http:
        async with http.put(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), data=b"forged") as response:
            assert response.status == 403
        async with http.put(url, data=b"StorePath: /nix/store/abc") as response:
            assert response.status == 200, await response.text()
    got = client.get_object(Bucket=s3_bucket.bucket, Key="abc.narinfo")
    assert got["Body"].read() == b"StorePath: /nix/store/abc"


async def test_multipart_upload_through_presigned_part_urls(seaweed_server: Any, s3_bucket: S3Bucket) -> None:
    client = seaweed_server.client()
    bucket, key = s3_bucket.bucket, "nar/big.nar.zst"
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    bodies = {1: b"a" * (5 * MIB), 2: b"b" * 1000}
    etags = {}
    async with aiohttp.ClientSession() as http:
        for number, body in bodies.items():
            url = client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                ExpiresIn=600,
            )
            async with http.put(url, data=io.BytesIO(body)) as response:
                assert response.status == 200, await response.text()
                etags[number] = response.headers["ETag"]
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [(n, len(bodies[n]), etags[n]) for n in (1, 2)]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2)]},
    )
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == bodies[1] + bodies[2]

    aborted = client.create_multipart_upload(Bucket=bucket, Key="nar/abandoned.nar.zst")["UploadId"]
    client.abort_multipart_upload(Bucket=bucket, Key="nar/abandoned.nar.zst", UploadId=aborted)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.list_parts(Bucket=bucket, Key="nar/abandoned.nar.zst", UploadId=aborted)
    assert _error_code(info.value) == (404, "NoSuchUpload")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_delete_bucket_force_empties_it_first_and_tolerates_a_missing_bucket(seaweed_server: Any) -> None:
    client = seaweed_server.client()
    seaweed_server.create_bucket("doomed-bucket")
    for i in range(3):
        client.put_object(Bucket="doomed-bucket", Key=f"k{i}", Body=b"x")
    client.create_multipart_upload(Bucket="doomed-bucket", Key="pending")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.delete_bucket(Bucket="doomed-bucket")
    assert _error_code(info.value) == (409, "BucketNotEmpty")  # like S3, so force has something to do
    seaweed_server.delete_bucket("doomed-bucket", force=True)
    assert "doomed-bucket" not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    seaweed_server.delete_bucket("doomed-bucket")


@pytest.mark.parametrize("run", [1, 2])
def test_s3_bucket_is_a_fresh_empty_bucket_for_each_test(seaweed_server: Any, s3_bucket: S3Bucket, run: int) -> None:
    client = seaweed_server.client()
    # The second run would see the first run's object if its bucket were handed out again.
    assert client.list_objects_v2(Bucket=s3_bucket.bucket).get("Contents", []) == []
    client.put_object(Bucket=s3_bucket.bucket, Key="marker", Body=str(run).encode())


def test_a_kept_directory_is_served_again_with_reuse_and_refused_without(tmp_path: Path) -> None:
    base = tmp_path / "weed"
    with seaweed_server(base, keep=True) as weed:
        weed.create_bucket("kept-bucket")
        weed.client().put_object(Bucket="kept-bucket", Key="nar/kept", Body=b"kept bytes")
        first = (weed.endpoint_url, weed.access_key_id)
    with pytest.raises(ServiceError, match="not an empty directory"), seaweed_server(base):
        pass
    with seaweed_server(base, reuse=True) as weed:
        assert (weed.endpoint_url, weed.access_key_id) != first  # new ports, new keys
        assert weed.client().get_object(Bucket="kept-bucket", Key="nar/kept")["Body"].read() == b"kept bytes"
    assert (base / "data").is_dir()  # reuse keeps the directory for the next run
