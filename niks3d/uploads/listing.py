"""The ``.ls`` listing of a published store path: niks3d's own, derived from the NAR it is published with
(docs/security.md, rule 8).

A listing a writer sends (uploaded in a push session, or ``PUT <hash>.ls`` by stock Nix) is only a request for
one: it is parsed strictly when it arrives, and when the path is published niks3d writes the listing of the
path's NAR under ``<hash>.ls`` itself, whatever was there. So no writer can make ``<hash>.ls`` describe another
NAR than the path's, whoever's path it is, and after publication nothing but niks3d writes the key.

The listing is rendered as Nix 2.8 writes it (:func:`niks3d.nix.listing.render_listing`). Deriving it means
reading the NAR, so the NAR verification of a push (which reads it anyway) keeps the listing it saw in a
:class:`ListingCache`; the publication reads the NAR again only when the cache does not have it (another daemon
verified it, it was verified long ago, or the writer is trusted and its NARs are not read).
"""

from __future__ import annotations

__all__ = ["LS_TYPE", "ListingCache", "derive_listings", "nar_listing", "put_listings"]

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from niks3d.errors import ObjectNotFound
from niks3d.nix.decompress import StreamDecompressor
from niks3d.nix.errors import InvalidNar
from niks3d.nix.listing import render_listing
from niks3d.nix.nar_read import NarValidator

if TYPE_CHECKING:
    from niks3d.storage.s3 import Bucket
    from niks3d.uploads.context import PushContext

logger = logging.getLogger(__name__)
LS_TYPE = "application/json"
# Listings kept by NAR key, in bytes: a listing is about 60 bytes per file of its NAR.
LISTING_CACHE_BYTES = 64 * 1024 * 1024
_PUT_CONCURRENCY = 32


class ListingCache:
    """Rendered listings of recently verified NARs, by NAR key, the most recently used kept (bounded in bytes).

    A NAR key names its content (the hash of its bytes), so a listing kept for a key stays right.
    """

    def __init__(self, max_bytes: int = LISTING_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._bytes = 0
        self._kept: OrderedDict[str, bytes] = OrderedDict()

    def put(self, nar_key: str, listing: bytes) -> None:
        if nar_key in self._kept or len(listing) > self._max:
            return
        self._kept[nar_key] = listing
        self._bytes += len(listing)
        while self._bytes > self._max:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, nar_key: str) -> bytes | None:
        listing = self._kept.get(nar_key)
        if listing is not None:
            self._kept.move_to_end(nar_key)
        return listing


async def nar_listing(bucket: Bucket, nar_key: str, compression: str) -> bytes | None:
    """The rendered listing of the NAR object ``nar_key``; None if it is gone or is not a NAR."""
    validator = NarValidator(listing=True)
    decoder = StreamDecompressor(compression, validator.feed)
    try:
        async with await bucket.open_stream(nar_key) as stream:
            async for chunk in stream:
                decoder.feed(chunk)
        decoder.finish()
        result = validator.finish()
    except ObjectNotFound:
        return None
    except InvalidNar as exc:
        logger.warning("%s is not a NAR (%s): no listing is published for it", nar_key, exc)
        return None
    assert result.listing is not None
    return render_listing(result.listing)


async def derive_listings(ctx: PushContext, nars: Mapping[str, tuple[str, str]]) -> dict[str, bytes]:
    """hash part -> the listing of its NAR, for ``nars`` (hash part -> (NAR key, compression)); a NAR that is not
    one gets none. Kept listings first; the others read from the bucket, at most ``s3.verify_concurrency`` at once.
    """
    found: dict[str, bytes] = {}
    todo: dict[tuple[str, str], list[str]] = {}
    for hash_part, (key, compression) in nars.items():
        kept = ctx.listings.get(key)
        if kept is not None:
            found[hash_part] = kept
        else:
            todo.setdefault((key, compression), []).append(hash_part)

    async def read(key: str, compression: str) -> tuple[str, bytes | None]:
        async with ctx.verify_slots:
            return key, await nar_listing(ctx.bucket, key, compression)

    for (key, listing), hashes in zip(await asyncio.gather(*(read(k, c) for k, c in todo)), todo.values(), strict=True):
        if listing is not None:
            ctx.listings.put(key, listing)
            found.update((h, listing) for h in hashes)
    return found


async def put_listings(bucket: Bucket, listings: Iterable[tuple[str, bytes]]) -> list[tuple[str, int, None]]:
    """Write ``(key, listing)`` pairs to the bucket; returns their ``(key, size, None)`` to mark present (no file
    hash is recorded for a listing, as ``niks3d import`` records none: what it says is compared, not its bytes).

    The caller holds the listings' object rows locked and records them in the same transaction.
    """
    items = list(listings)
    slots = asyncio.Semaphore(_PUT_CONCURRENCY)

    async def put(key: str, body: bytes) -> None:
        async with slots:
            await bucket.put(key, body, content_type=LS_TYPE)

    await asyncio.gather(*(put(key, body) for key, body in items))
    return [(key, len(body), None) for key, body in items]
