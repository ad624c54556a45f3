"""ensure_nix_cache_info writes the bucket's nix-cache-info once, and again only when the text changes."""

from __future__ import annotations

import asyncio

import pytest

from niks3d.storage import Bucket, ensure_nix_cache_info

pytestmark = pytest.mark.s3

TEXT = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"


async def test_nix_cache_info_is_written_once_then_left_alone(bucket: Bucket):
    assert await ensure_nix_cache_info(bucket, TEXT) is True
    first = await bucket.head("nix-cache-info")
    assert first is not None
    assert first.content_type == "text/x-nix-cache-info"
    assert await bucket.get("nix-cache-info") == TEXT.encode()

    await asyncio.sleep(1.1)  # Last-Modified has one-second resolution: a rewrite now would show
    assert await ensure_nix_cache_info(bucket, TEXT) is False
    again = await bucket.head("nix-cache-info")
    assert again == first  # same ETag and Last-Modified: not rewritten


async def test_nix_cache_info_is_rewritten_when_the_text_changes(bucket: Bucket):
    # What Nix itself PUTs when it finds no nix-cache-info (docs/protocol.md 4.1).
    await bucket.put("nix-cache-info", b"StoreDir: /nix/store\n", content_type="text/x-nix-cache-info")
    assert await ensure_nix_cache_info(bucket, TEXT) is True
    assert await bucket.get("nix-cache-info") == TEXT.encode()
    assert await ensure_nix_cache_info(bucket, TEXT) is False
