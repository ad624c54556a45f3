"""Keeping the bucket's ``nix-cache-info`` equal to what the configuration announces.

Nix reads ``nix-cache-info`` before anything else and, when it is missing, tries to create it with a PUT
(docs/protocol.md §4.1), so the daemon writes it at start-up. It is rewritten only when the text differs, so
replicas starting together do not rewrite it needlessly (they would write the same bytes anyway).
"""

from __future__ import annotations

__all__ = ["NIX_CACHE_INFO_CONTENT_TYPE", "NIX_CACHE_INFO_KEY", "ensure_nix_cache_info"]

import logging

from niks3d.errors import ObjectNotFound
from niks3d.nix.bucketkeys import CONTENT_TYPES
from niks3d.storage.s3 import Bucket

log = logging.getLogger(__name__)

NIX_CACHE_INFO_KEY = "nix-cache-info"
NIX_CACHE_INFO_CONTENT_TYPE = CONTENT_TYPES["nix-cache-info"]


async def ensure_nix_cache_info(bucket: Bucket, text: str) -> bool:
    """Write ``text`` as ``nix-cache-info`` unless the bucket holds exactly it already; True if it wrote."""
    wanted = text.encode()
    try:
        current: bytes | None = await bucket.get(NIX_CACHE_INFO_KEY)
    except ObjectNotFound:
        current = None
    if current == wanted:
        log.debug("%s in bucket %s is up to date", NIX_CACHE_INFO_KEY, bucket.name)
        return False
    await bucket.put(NIX_CACHE_INFO_KEY, wanted, content_type=NIX_CACHE_INFO_CONTENT_TYPE)
    log.info(
        "%s %s in bucket %s",
        "created" if current is None else "updated",
        NIX_CACHE_INFO_KEY,
        bucket.name,
    )
    return True
