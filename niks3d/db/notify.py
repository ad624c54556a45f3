"""The change channel of published store paths: who inserts or deletes ``store_paths`` rows says so here.

Every daemon's read proxy listens on :data:`CHANNEL` and forgets (or learns) the narinfos named in a payload:
``+hash,hash,...`` for paths published, ``-hash,...`` for paths deleted. The notification is sent inside the
transaction that changes the rows, so PostgreSQL delivers it at commit, and never for a rollback.
"""

from __future__ import annotations

__all__ = ["CHANNEL", "keep_alive", "notify_store_paths"]

from collections.abc import Iterable

import asyncpg

from niks3d.nix.storepath import validate_hash_part

CHANNEL = "niks3d_store_paths"
_HASHES_PER_NOTIFY = 200  # keeps each payload far below PostgreSQL's 8000-byte limit


async def notify_store_paths(
    conn: asyncpg.Connection, *, published: Iterable[str] = (), deleted: Iterable[str] = ()
) -> None:
    """Tell every daemon's read proxy that the store paths with these hash parts appeared or went away.

    Call it on the connection, and inside the transaction, that inserts or deletes the ``store_paths`` rows:
    the notification is delivered at commit, and not at all if the transaction rolls back.
    """
    for sign, hashes in (("+", published), ("-", deleted)):
        ordered = sorted({validate_hash_part(h) for h in hashes})
        for start in range(0, len(ordered), _HASHES_PER_NOTIFY):
            payload = sign + ",".join(ordered[start : start + _HASHES_PER_NOTIFY])
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


async def keep_alive(conn: asyncpg.Connection) -> None:
    """One round trip on a listening connection, so that a connection lost without a FIN is noticed."""
    await conn.fetchval("SELECT 1")
