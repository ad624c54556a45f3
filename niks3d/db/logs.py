"""Build logs with and without their proof (docs/security.md, rule 3; migration 0007).

A log object is ``proven`` once it was published with the proof that its derivation built a path its writer
publishes. A proven log replaces one that is present without that proof, in place: the writer locks the log's
row (``FOR NO KEY UPDATE``, which a GC sweep's ``FOR UPDATE`` waits for), finds it still unproven, overwrites the
bucket key (S3 replaces an object atomically: a reader gets the old log or the new one, never none) and marks it
proven in the same transaction. A proven log is never replaced, and an unproven one never replaces anything.
"""

from __future__ import annotations

__all__ = ["LogRow", "lock_logs", "mark_proven"]

from collections.abc import Sequence
from dataclasses import dataclass

from asyncpg import Connection


@dataclass(frozen=True, slots=True)
class LogRow:
    key: str
    state: str
    proven: bool
    size: int | None
    file_hash: str | None


async def lock_logs(conn: Connection, keys: Sequence[str]) -> dict[str, LogRow]:
    """Lock the rows of the log ``keys`` in key order; key -> its row, for the keys that exist."""
    rows = await conn.fetch(
        """SELECT key, state, proven, size, file_hash FROM objects
           WHERE key = ANY($1::text[]) AND kind = 'log' ORDER BY key FOR NO KEY UPDATE""",
        sorted(keys),
    )
    return {r["key"]: LogRow(r["key"], r["state"], r["proven"], r["size"], r["file_hash"]) for r in rows}


async def mark_proven(conn: Connection, entries: Sequence[tuple[str, int, str | None]]) -> None:
    """Record the logs ``(key, size, file_hash)`` as present in the bucket with their proof."""
    await conn.execute(
        """UPDATE objects o SET state = 'present', proven = true, size = x.size, file_hash = x.file_hash,
                  present_at = coalesce(o.present_at, now())
           FROM unnest($1::text[], $2::bigint[], $3::text[]) AS x(key, size, file_hash)
           WHERE o.key = x.key AND o.kind = 'log'""",
        [k for k, _, _ in entries],
        [s for _, s, _ in entries],
        [h for _, _, h in entries],
    )
