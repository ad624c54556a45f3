"""Full verification of an uploaded NAR (``s3.verify = "full"``): download, hash, decompress, parse, compare.

The object is streamed: its SHA-256 must equal the reported FileHash, and its zstd-decompressed bytes must be a
NAR that Nix's parser accepts with exactly the declared NarHash and NarSize. Memory stays bounded by the chunk
size whatever the NAR's size.
"""

from __future__ import annotations

__all__ = ["verify_nar_object"]

import hashlib
from typing import TYPE_CHECKING

import zstandard

from niks3d.nix.errors import InvalidNar
from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import render_listing
from niks3d.nix.nar_read import NarValidator

if TYPE_CHECKING:
    from niks3d.storage.s3 import Bucket
    from niks3d.uploads.listing import ListingCache
    from niks3d.uploads.request import ObjectReport


async def verify_nar_object(
    bucket: Bucket,
    key: str,
    report: ObjectReport,
    *,
    nar_hash: bytes,
    nar_size: int,
    listings: ListingCache | None = None,
) -> str | None:
    """None when the object is what the client said it is, else the reason it is not.

    With ``listings``, the listing of a NAR that passed is kept there (uploads/listing.py): its path's
    publication needs it, and this is the one time niks3d reads the NAR anyway.
    """
    file_digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    validator = NarValidator(listing=listings is not None)
    size = 0
    try:
        async with await bucket.open_stream(key) as stream:
            async for chunk in stream:
                file_digest.update(chunk)
                data = decompressor.decompress(chunk)
                size += len(data)
                validator.feed(data)
                if size > nar_size:
                    return f"the NAR is larger than the declared NarSize {nar_size}"
        result = validator.finish()
    except zstandard.ZstdError as exc:
        return f"the object is not valid zstd: {exc}"
    except InvalidNar as exc:
        return f"the object is not a valid NAR: {exc}"
    if report.file_hash is not None and file_digest.digest() != report.file_hash:
        return (
            f"FileHash mismatch: reported {format_sha256(report.file_hash)}, got {format_sha256(file_digest.digest())}"
        )
    if result.nar_size != nar_size:
        return f"NarSize mismatch: declared {nar_size}, the NAR has {result.nar_size} bytes"
    if result.nar_hash != nar_hash:
        return f"NarHash mismatch: declared {format_sha256(nar_hash)}, the NAR has {format_sha256(result.nar_hash)}"
    if listings is not None and result.listing is not None:
        listings.put(key, render_listing(result.listing))
    return None
