"""The cache of NAR listings kept from verification for publication (niks3d/uploads/listing.py)."""

from __future__ import annotations

from niks3d.uploads.listing import ListingCache


def test_the_listing_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    cache = ListingCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1234", None, b"1234")
    cache.put("big", b"x" * 11)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get("big") is None and cache.get("a") == b"1234"
