"""Presigned PUT and GET URLs, used by a plain aiohttp client as niks3 push and Nix would use them."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import aiohttp
import botocore.auth
import pytest

from niks3d.config import S3Settings
from niks3d.storage import Bucket, open_bucket

pytestmark = pytest.mark.s3


async def test_presigned_put_with_the_returned_headers_stores_the_object(bucket: Bucket):
    request = await bucket.presign_put(
        "log/abc-foo.drv", content_type="text/plain; charset=utf-8", content_encoding="zstd"
    )
    assert request.method == "PUT"
    assert request.headers == {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "zstd"}
    signed = parse_qs(urlsplit(request.url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert sorted(signed) == ["content-encoding", "content-type", "host"]
    async with (
        aiohttp.ClientSession() as http,
        http.put(request.url, data=b"zstd bytes", headers=request.headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
    info = await bucket.head("log/abc-foo.drv")
    assert info is not None
    assert (info.size, info.content_type, info.content_encoding) == (
        10,
        "text/plain; charset=utf-8",
        "zstd",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/octet-stream", "Content-Encoding": "zstd"},
        {"Content-Type": "application/x-nix-nar"},
    ],
    ids=["changed-content-type", "dropped-content-encoding"],
)
async def test_presigned_put_is_refused_when_a_signed_header_differs(bucket: Bucket, headers):
    request = await bucket.presign_put("nar/x.nar.zst", content_type="application/x-nix-nar", content_encoding="zstd")
    async with (
        aiohttp.ClientSession() as http,
        http.put(request.url, data=b"bytes", headers=headers) as resp,
    ):
        assert resp.status == 403
        assert "SignatureDoesNotMatch" in await resp.text()
    assert await bucket.head("nar/x.nar.zst") is None


async def test_presigned_url_carries_the_requested_expiry(bucket: Bucket):
    default = await bucket.presign_put("a", content_type="text/plain")
    short = await bucket.presign_put("a", content_type="text/plain", expires=timedelta(minutes=5))
    too_long = await bucket.presign_get("a", expires=timedelta(days=30))
    assert parse_qs(urlsplit(default.url).query)["X-Amz-Expires"] == ["3600"]
    assert parse_qs(urlsplit(short.url).query)["X-Amz-Expires"] == ["300"]
    assert parse_qs(urlsplit(too_long).query)["X-Amz-Expires"] == [str(7 * 24 * 3600)]


async def test_presigning_is_local_and_cheap(s3_settings: S3Settings):
    # Nothing listens on port 9 (discard); presigning must not need the server at all.
    settings = s3_settings.model_copy(update={"endpoint_url": "http://127.0.0.1:9"})
    async with open_bucket(settings, "AKID", "SECRET") as offline:
        started = time.perf_counter()
        for number in range(1, 201):
            await offline.presign_part("nar/big.nar.zst", "upload-1", number)
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # about 0.2 ms each on a laptop


async def test_presigned_get_reads_the_object_without_credentials(bucket: Bucket):
    await bucket.put("abc.ls", b'{"version":1}', content_type="application/json")
    url = await bucket.presign_get("abc.ls")
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b'{"version":1}'


def _other_host_for(endpoint_url: str) -> str:
    """The same server under another name: 127.0.0.1 <-> localhost."""
    parts = urlsplit(endpoint_url)
    host = "localhost" if parts.hostname == "127.0.0.1" else "127.0.0.1"
    return f"{parts.scheme}://{host}:{parts.port}"


async def test_presigned_urls_use_the_public_endpoint_and_are_signed_for_it(
    s3_settings: S3Settings, s3_bucket, bucket: Bucket
):
    public = _other_host_for(s3_bucket.endpoint_url)
    settings = s3_settings.model_copy(update={"public_endpoint_url": public})
    async with open_bucket(settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as split:
        put = await split.presign_put("via-public", content_type="text/plain")
        get = await split.presign_get("via-public")
        await split.put("direct", b"internal endpoint still used for requests", content_type="text/plain")
    assert put.url.startswith(f"{public}/{s3_bucket.bucket}/via-public?")
    assert get.startswith(f"{public}/{s3_bucket.bucket}/via-public?")
    assert await bucket.get("direct") == b"internal endpoint still used for requests"

    internal_host = urlsplit(s3_bucket.endpoint_url).netloc
    rewritten = put.url.replace(urlsplit(public).netloc, internal_host, 1)
    async with aiohttp.ClientSession() as http:
        # The signature covers the host, so merely rewriting a URL signed for another host fails ...
        async with http.put(rewritten, data=b"x", headers=put.headers) as resp:
            assert resp.status == 403
        # ... while the URL signed for the public host works there.
        async with http.put(put.url, data=b"public", headers=put.headers) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(get) as resp:
            assert await resp.read() == b"public"


_QUICK_CASES = [
    ("head_object", {}),
    ("get_object", {}),
    ("put_object", {"ContentType": "text/x-nix-narinfo"}),
    (
        "put_object",
        {
            "ContentType": "application/x-nix-nar",
            "ContentEncoding": "zstd",
            "CacheControl": "no-cache",
            "ChecksumSHA256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        },
    ),
    (
        "copy_object",
        {
            "CopySource": {"Bucket": "cache-bucket", "Key": "staging/9f/a+b c!:~.nar.zst"},
            "MetadataDirective": "REPLACE",
            "ContentType": "application/x-nix-nar",
            "ContentEncoding": "zstd",
        },
    ),
]


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize(
    "key",
    ["staging/0b0e5c3e-5c0a-4a43-9a7f-1f0d2e1c9a11/nar/1w8x.nar.zst", "realisations/sha256:ab!out.doi", "a+b~c d"],
)
async def test_quick_presigned_urls_are_the_ones_aiobotocore_makes(
    s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch, style: str, key: str
):
    # One clock for both signers; the current time, since whatever else signs meanwhile (the bucket fixture's
    # teardown) is refused by SeaweedFS as RequestTimeTooSkewed more than 15 minutes off.
    frozen = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: frozen)
    settings = s3_settings.model_copy(update={"addressing_style": style, "bucket": "cache-bucket"})
    async with open_bucket(settings, "AKIDEXAMPLE", "SECRET/KEY+") as opened:
        for method, extra in _QUICK_CASES:
            params = {"Bucket": "cache-bucket", "Key": key, **extra}
            for internal in (True, False):
                quick = await opened._presign(method, params, timedelta(minutes=7), key, internal=internal)
                slow = await opened._presigner.generate_presigned_url(  # it rewrites CopySource in place
                    ClientMethod=method, Params=copy.deepcopy(params), ExpiresIn=420
                )
                assert quick == slow
        assert opened._quick[False] is not None and opened._quick[True] is not None  # the quick way was taken


async def test_the_default_credential_chain_presigns_through_aiobotocore(s3_settings: S3Settings):
    async with open_bucket(s3_settings, None, None) as chained:
        assert chained._credentials is None  # refreshable credentials: nothing is cached
