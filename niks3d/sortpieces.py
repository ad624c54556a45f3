"""Sorting a large list without holding the GIL for the whole sort (issue 20).

``sorted`` is one C call: for the 100,000 to 200,000 keys of a large push session it runs 50 to 150 ms
(more on a loaded machine), and no other thread runs meanwhile, the event loop's neither, though the sort runs
in a worker thread. :func:`sorted_in_pieces` sorts slices of :data:`PIECE` items (each a short C call) and
merges them with :func:`heapq.merge`, whose Python loop lets the interpreter switch threads between items.

The items are taken a piece at a time too, and what each piece made leaves the garbage collector's walks
(:func:`niks3d.heap.built`, counted per item). ``list(wanted.items())`` of a large session's 200,000 claims is one C
call that makes as many tuples; while it ran, CPython started a collection of everything not yet frozen, and the
event loop waited 106 ms for the GIL (a watchdog thread's sample of ``bench/session.py --paths 100000`` on a quiet
machine).
"""

from __future__ import annotations

__all__ = ["PIECE", "sorted_in_pieces"]

import heapq
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from niks3d.heap import built

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparisonT

# Items per slice: about a millisecond of sorting.
PIECE = 4_096


def sorted_in_pieces(items: Iterable[SupportsRichComparisonT]) -> list[SupportsRichComparisonT]:
    """``sorted(items)``, the same list, in pieces of at most :data:`PIECE`."""
    iterator = iter(items)
    runs = []
    while piece := list(itertools.islice(iterator, PIECE)):
        runs.append(sorted(piece))
        built(len(piece))  # what the piece made leaves the garbage collector's walks (niks3d/heap.py)
    if len(runs) <= 1:
        return runs[0] if runs else []
    return list(heapq.merge(*runs))
