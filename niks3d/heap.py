"""Python's cyclic garbage collector in a daemon that builds large long-lived structures (issue 20).

The collector walks every object it tracks in the generation it collects, holding the GIL. A parsed request of
100,000 paths is about a million such objects (dataclasses, tuples, lists, dicts); while it is built, the
number of objects that survive grows fast enough that CPython 3.11 collects its oldest generation again and
again, each time walking the whole heap: 0.2 to 0.9 s per collection, during which no other thread runs, the
event loop's neither, whichever thread triggered it (measured with gc.callbacks on bench/session.py).

:func:`settle` collects what is not frozen yet (the objects made since the last settle: a few ms), then moves
everything alive into the permanent generation (``gc.freeze``), which no collection walks again. The daemon
settles once when it has started (the modules, the application), and the builders of large requests every
:data:`SETTLE_EVERY` items, JSON's scanner included (server/body.py): so no collection meets more than a slice
of a request. A frozen object is freed as usual when its last reference goes (a parsed request holds no
reference cycles); only a cycle that a frozen object is part of is never collected, should it become garbage
(asyncio's and aiohttp's objects alive at a settle are freed by their reference counts, as nearly everything).
"""

from __future__ import annotations

__all__ = ["SETTLE_EVERY", "built", "settle"]

import gc
import threading

# Items (paths, JSON integers) a builder adds between two settles: about ten thousand tracked objects, a few ms
# to walk.
SETTLE_EVERY = 1_000


def settle() -> None:
    """Collect what is not frozen, then freeze what is alive (out of every later collection's walk)."""
    gc.collect()
    gc.freeze()


# Items counted since start-up, by every thread (a cell, updated under the lock).
_total = [0]
_lock = threading.Lock()


def built(items: int = 1) -> None:
    """Count ``items`` built (paths parsed, JSON integers scanned, keys taken for a sort); each
    :data:`SETTLE_EVERY` of them settle once, whichever thread counts them."""
    with _lock:
        before = _total[0]
        _total[0] = before + items
    if before // SETTLE_EVERY != (before + items) // SETTLE_EVERY:
        settle()
