"""The order of registration: every staged path after the staged paths it references, computed once.

Kahn's algorithm over the staged graph (``niks3d.db.importing.staged_graph``), in memory: level 0 holds the
paths whose references are all published already (or that reference only themselves), level k+1 the paths whose
last staged reference is at level k. Registering in this order, in batches of any size, never commits a path
before a path it references: a reference is in an earlier batch or in the same transaction. Paths on a reference
cycle get no level and stay staged (the run reports them). The cost is one pass over the paths and references,
whatever the depth of the graph.
"""

from __future__ import annotations

__all__ = ["registration_order"]

from collections.abc import Mapping, Sequence


def registration_order(graph: Mapping[str, Sequence[str]]) -> tuple[list[str], int]:
    """``graph``: staged hash -> its references (itself excluded); references outside ``graph`` are published.
    Returns the hashes that can be registered, references first (by level, then hash), and the number of levels."""
    waiting: dict[str, int] = {}
    referrers: dict[str, list[str]] = {}
    for hash_part, refs in graph.items():
        staged = {r for r in refs if r in graph}
        waiting[hash_part] = len(staged)
        for ref in staged:
            referrers.setdefault(ref, []).append(hash_part)
    level = sorted(h for h, n in waiting.items() if n == 0)
    order: list[str] = []
    levels = 0
    while level:
        levels += 1
        order.extend(level)
        following: list[str] = []
        for hash_part in level:
            for referrer in referrers.get(hash_part, ()):
                waiting[referrer] -= 1
                if waiting[referrer] == 0:
                    following.append(referrer)
        level = sorted(following)
    return order, levels
