"""Whether the log of a floating content-addressed derivation is bound to its path (docs/security.md, rule 3).

Such a log is proven only by a realisation that niks3d publishes, binding one of the derivation's outputs to the
pushed path: its build-trace entry (uploads/drvproof.py). A push claims that entry with the path, and the first
push to publish an entry keeps it (rule 7). So where the log is put in place and at ``complete``, a log whose
every binding is already published for another path is refused: that path's writer has the derivation's log.
"""

from __future__ import annotations

__all__ = ["unbound_logs"]

from collections.abc import Mapping, Sequence

from asyncpg import Connection

from niks3d.db import paths as db_paths


async def unbound_logs(
    conn: Connection, keys: Sequence[str], bindings: Mapping[str, tuple[tuple[str, str], ...]]
) -> dict[str, str]:
    """log key -> why it is refused, for the ``keys`` whose every binding names another path; no statement
    unless one of them has a binding."""
    bound = [k for k in keys if k in bindings]
    if not bound:
        return {}
    holders = await db_paths.realisation_holders(conn, sorted({b for k in bound for b, _ in bindings[k]}))
    refused: dict[str, str] = {}
    for key in bound:
        taken = [(b, holders[b]) for b, path in bindings[key] if holders.get(b, path) != path]
        if len(taken) == len(bindings[key]):
            entry, held = taken[0]
            refused[key] = (
                f"log refused: its derivation's realisation {entry} is published for {held}, not for "
                f"{bindings[key][0][1]}; the log of a content-addressed derivation goes with the output its "
                "realisation names"
            )
    return refused
