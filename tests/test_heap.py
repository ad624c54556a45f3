"""niks3d/heap.py: settling freezes what is alive; built() settles every SETTLE_EVERY items."""

from __future__ import annotations

import gc

from niks3d import heap


def test_settle_freezes_what_is_alive_and_collects_the_rest() -> None:
    kept = [[i] for i in range(1000)]
    cycle: list[object] = []
    cycle.append(cycle)
    gone = id(cycle)
    del cycle
    before = gc.get_freeze_count()
    try:
        heap.settle()
        assert gc.get_freeze_count() >= before + len(kept)
        assert all(id(o) != gone for o in gc.get_objects())  # the garbage cycle was collected, not frozen
        assert gc.get_count()[0] < 100  # nothing left to walk in the youngest generation
    finally:
        gc.unfreeze()


def test_built_settles_every_so_many_items(monkeypatch) -> None:
    settles: list[int] = []
    monkeypatch.setattr(heap, "settle", lambda: settles.append(1))
    for _ in range(3 * heap.SETTLE_EVERY):
        heap.built()
    assert len(settles) == 3


def test_built_counts_items_taken_several_at_a_time(monkeypatch) -> None:
    settles: list[int] = []
    monkeypatch.setattr(heap, "settle", lambda: settles.append(1))
    heap.built(2 * heap.SETTLE_EVERY + 5)  # passes two or three of the thousands at once: one settle is enough
    assert len(settles) == 1
    heap.built(heap.SETTLE_EVERY)  # passes exactly one, wherever the count stood
    assert len(settles) == 2
    heap.built(heap.SETTLE_EVERY // 4)
    heap.built(heap.SETTLE_EVERY // 4)
    assert len(settles) in (2, 3)  # at most one boundary in half a thousand
