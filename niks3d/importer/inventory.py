"""What the bucket holds: one listing of every key, by kind, with sizes and dates (docs/operations.md).

The bucket is listed in parallel under the collector's disjoint prefixes (``niks3d.gc.orphans.listing_prefixes``
covers every key shape the cache writes). Keys that do not parse as cache keys (``debuginfo/``, a tutorial's
stray files, our own ``quarantine/``) are counted as *foreign* and never touched.
"""

from __future__ import annotations

__all__ = ["Inventory", "list_bucket"]

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from niks3d.gc.orphans import LIST_CONCURRENCY, listing_prefixes
from niks3d.nix.bucketkeys import parse_bucket_key
from niks3d.nix.errors import NixFormatError
from niks3d.storage.s3 import Bucket


@dataclass
class Inventory:
    """Every cache key of the bucket: ``objects`` maps key -> (kind, size, last modified)."""

    objects: dict[str, tuple[str, int, datetime]] = field(default_factory=dict)
    foreign: int = 0
    listed: int = 0

    def size(self, key: str) -> int | None:
        entry = self.objects.get(key)
        return entry[1] if entry else None

    def keys_of(self, kind: str) -> list[str]:
        return sorted(k for k, v in self.objects.items() if v[0] == kind)


async def list_bucket(bucket: Bucket) -> Inventory:
    """List the whole bucket once."""
    inventory = Inventory()
    slots = asyncio.Semaphore(LIST_CONCURRENCY)

    async def scan(prefix: str) -> None:
        async with slots:
            async for info in bucket.iter_objects(prefix):
                inventory.listed += 1
                try:
                    parsed = parse_bucket_key(info.key)
                except NixFormatError:
                    inventory.foreign += 1
                    continue
                if parsed.kind == "nix-cache-info":
                    continue
                inventory.objects[info.key] = (parsed.kind, info.size, info.last_modified)

    async with asyncio.TaskGroup() as group:
        for prefix in listing_prefixes():
            group.create_task(scan(prefix))
    return inventory
