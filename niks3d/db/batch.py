"""Statements over many keys, in batches: one statement per :data:`BATCH` keys.

A session of 100,000 paths claims about 200,000 keys. One statement over all of them holds a connection for
seconds under load (close to ``database.statement_timeout``), and asyncpg encodes its array and decodes its
rows in one piece on the event loop. Batches bound both; the callers run them in one transaction, so the
result is the same (issue 20; docs/database.md).
"""

from __future__ import annotations

__all__ = ["BATCH", "batches"]

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Keys per statement: about 5 ms of encoding and decoding on the event loop, far below any timeout.
BATCH = 5_000


def batches(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (in order, so that locks are taken in key order)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
