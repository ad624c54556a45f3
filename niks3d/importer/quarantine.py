"""``--quarantine``: make every broken narinfo invisible to Nix, referrers first, and hand orphans to GC.

Decision (docs/operations.md, "Quarantine"): a broken narinfo is *moved* to ``quarantine/<key>`` (copied, then
deleted from its key), so Nix no longer sees it and the operator can still read what it said; niks3d never
touches ``quarantine/`` again (it is not a cache key: GC leaves it alone), delete it by hand once inspected.
Everything else nothing needs (the broken paths' NARs, listings, orphan objects) gets a ``pending`` row dated by
its LastModified, as GC's orphan phase would give it, so the next GC run deletes it once it is older than the
grace period. Referrers go first: a path whose reference is broken is moved before that reference, so at every
moment every narinfo left in the bucket still has its references (design invariant 1).
"""

from __future__ import annotations

__all__ = ["QUARANTINE_PREFIX", "quarantine"]

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from asyncpg import Connection

from niks3d.db import importing as db
from niks3d.errors import ObjectNotFound
from niks3d.importer.problems import Problem
from niks3d.storage.s3 import Bucket
from niks3d.uploads.objects import CONTENT_TYPES

logger = logging.getLogger(__name__)
QUARANTINE_PREFIX = "quarantine/"
BROKEN_NARINFO_KINDS = frozenset({"unparsable", "wrong_key", "nar_missing", "nar_size", "reference_missing"})


def referrers_first(keys: Sequence[str], refs: dict[str, tuple[str, ...]]) -> list[str]:
    """Order narinfo keys so that every key comes before the keys of the paths it references."""
    broken = {k[:32] for k in keys}
    height: dict[str, int] = {}

    def h(part: str, trail: frozenset[str]) -> int:
        if part not in height:
            below = [r for r in refs.get(part, ()) if r in broken and r != part and r not in trail]
            height[part] = 1 + max((h(r, trail | {part}) for r in below), default=-1)
        return height[part]

    return sorted(keys, key=lambda k: (-h(k[:32], frozenset()), k))


async def quarantine(
    conn: Connection, bucket: Bucket, problems: Sequence[Problem], orphans: Sequence[tuple[str, str, int, datetime]]
) -> Counter[str]:
    counts: Counter[str] = Counter()
    keys = sorted({p.key for p in problems if p.kind in BROKEN_NARINFO_KINDS and p.key.endswith(".narinfo")})
    refs = await db.staged_refs(conn, [k[:32] for k in keys])
    for key in referrers_first(keys, refs):
        try:
            body = await bucket.get(key)
        except ObjectNotFound:
            continue
        await bucket.put(QUARANTINE_PREFIX + key, body, content_type=CONTENT_TYPES["narinfo"][0])
        await bucket.delete_many([key])
        counts["quarantined"] += 1
        logger.info("quarantined %s (moved to %s%s)", key, QUARANTINE_PREFIX, key)
    for start in range(0, len(orphans), 1000):
        counts["orphans_adopted"] += await db.adopt_untracked(conn, orphans[start : start + 1000])
    return counts
