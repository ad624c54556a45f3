"""The storage package's public names and its pure helpers: ranges, ETags, addressing, AWS presigned URLs."""

from __future__ import annotations

import pytest

import niks3d.storage
from niks3d.config import S3Settings
from niks3d.storage import open_bucket
from niks3d.storage.models import normalize_etag, quote_etag, size_from_content_range
from niks3d.storage.s3 import _addressing_style, range_header


def test_public_surface_is_pinned():
    assert sorted(niks3d.storage.__all__) == [
        "Bucket",
        "DeleteError",
        "DeleteResult",
        "ObjectInfo",
        "ObjectStream",
        "PartInfo",
        "PresignedRequest",
        "RangeNotSatisfiable",
        "UploadInfo",
        "UploadNotFound",
        "ensure_nix_cache_info",
        "open_bucket",
    ]


def test_ranges_become_http_range_headers_and_inverted_ones_are_refused():
    assert range_header((0, 0)) == "bytes=0-0"
    assert range_header((7, None)) == "bytes=7-"
    assert range_header((-3, None)) == "bytes=-3"
    with pytest.raises(ValueError, match="not"):
        range_header((5, 2))
    with pytest.raises(ValueError, match="not"):
        range_header((-5, 2))


def test_etags_are_kept_bare_and_quoted_for_s3():
    assert normalize_etag('"abc"') == "abc"
    assert normalize_etag('W/"abc-3"') == "abc-3"
    assert normalize_etag("abc") == "abc"
    assert quote_etag('"abc"') == quote_etag("abc") == '"abc"'


def test_the_object_size_is_read_from_a_content_range():
    assert size_from_content_range("bytes 10-19/4096") == 4096
    assert size_from_content_range("bytes */5") == 5
    assert size_from_content_range("bytes */0") == 0
    assert size_from_content_range("bytes 0-9/*") is None
    assert size_from_content_range(None) is None


@pytest.mark.parametrize(
    ("style", "endpoint", "expected"),
    [
        ("auto", "http://127.0.0.1:8333", "path"),
        ("auto", None, "virtual"),
        ("virtual", "https://s3.example.org", "virtual"),
        ("path", None, "path"),
    ],
)
def test_auto_addressing_is_path_for_custom_endpoints_and_virtual_for_aws(style, endpoint, expected):
    settings = S3Settings(bucket="cache", endpoint_url=endpoint, addressing_style=style)
    assert _addressing_style(settings, endpoint) == expected


async def test_presigned_urls_for_aws_use_the_virtual_host_of_the_region():
    settings = S3Settings(bucket="my-cache", region="eu-central-1")
    async with open_bucket(settings, "AKIDEXAMPLE", "secret") as aws:
        url = await aws.presign_get("nar/x.nar.zst")
        put = await aws.presign_put("x.narinfo", content_type="text/x-nix-narinfo")
    assert url.startswith("https://my-cache.s3.eu-central-1.amazonaws.com/nar/x.nar.zst?")
    assert "X-Amz-Credential=AKIDEXAMPLE%2F" in url
    assert "%2Feu-central-1%2Fs3%2Faws4_request" in url
    assert put.url.startswith("https://my-cache.s3.eu-central-1.amazonaws.com/x.narinfo?")
