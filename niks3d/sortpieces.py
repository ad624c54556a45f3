"""Sorting a large list without holding the GIL for the whole sort (issue 20).

``sorted`` is one C call: for the 100,000 to 200,000 keys of a large push session it runs 50 to 150 ms
(more on a loaded machine), and no other thread runs meanwhile, the event loop's neither, though the sort runs
in a worker thread. :func:`sorted_in_pieces` sorts slices of :data:`PIECE` items (each a short C call) and
merges them with :func:`heapq.merge`, whose Python loop lets the interpreter switch threads between items.
"""

from __future__ import annotations

__all__ = ["PIECE", "sorted_in_pieces"]

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparisonT

# Items per slice: about a millisecond of sorting.
PIECE = 4_096


def sorted_in_pieces(items: Iterable[SupportsRichComparisonT]) -> list[SupportsRichComparisonT]:
    """``sorted(items)``, the same list, in pieces of at most :data:`PIECE`."""
    values = list(items)
    if len(values) <= PIECE:
        return sorted(values)
    runs = [sorted(values[i : i + PIECE]) for i in range(0, len(values), PIECE)]
    return list(heapq.merge(*runs))
