"""niks3d/sortpieces.py: the same order as sorted(), across the pieces' edges."""

from __future__ import annotations

import random

import pytest

from niks3d.sortpieces import PIECE, sorted_in_pieces


@pytest.mark.parametrize("n", [0, 1, PIECE - 1, PIECE, PIECE + 1, 5 * PIECE + 17])
def test_sorted_in_pieces_is_sorted(n: int) -> None:
    rng = random.Random(n)
    items = [(rng.choice("abc") * rng.randrange(1, 4), rng.randrange(10)) for _ in range(n)]
    assert sorted_in_pieces(items) == sorted(items)
    assert sorted_in_pieces(iter(items)) == sorted(items)
    keys = [f"{rng.getrandbits(64):x}" for _ in range(n)]
    assert sorted_in_pieces(dict.fromkeys(keys)) == sorted(set(keys))
