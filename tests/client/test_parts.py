"""Cutting a stream into multipart parts (parts.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.client.parts import PartSplitter, part_count, parts_in_flight
from niks3d.client.pipeline import PipelineSettings


def _split(size: int, feeds: list[bytes]) -> list[tuple[int, memoryview]]:
    splitter = PartSplitter(size)
    parts = [p for data in feeds for p in splitter.feed(data)]
    last = splitter.finish()
    return parts + ([last] if last else [])


@given(part_size=st.integers(1, 64), pieces=st.lists(st.binary(max_size=200), max_size=20))
def test_parts_are_exact_but_the_last_and_rebuild_the_stream(part_size, pieces):
    parts = _split(part_size, pieces)
    data = b"".join(pieces)
    assert b"".join(p for _, p in parts) == data
    assert [n for n, _ in parts] == list(range(1, len(parts) + 1))
    assert all(len(p) == part_size for _, p in parts[:-1])
    assert 0 < len(parts[-1][1]) <= part_size or data == b""
    assert len(parts) == part_count(len(data), part_size)


def test_data_ending_on_a_boundary_has_no_empty_last_part():
    parts = _split(4, [b"abcd", b"efgh"])
    assert parts == [(1, b"abcd"), (2, b"efgh")]


def test_an_empty_stream_is_one_empty_part():
    assert _split(4, []) == [(1, b"")]


def test_the_splitter_holds_less_than_one_part():
    splitter = PartSplitter(10)
    for _ in range(100):
        splitter.feed(b"x" * 7)
        assert splitter.buffered < 10
    assert splitter.total == 700


@pytest.mark.parametrize(
    ("part_size", "budget", "expected"),
    [(32 << 20, 96 << 20, 2), (5 << 20, 96 << 20, 8), (64 << 20, 96 << 20, 1), (16 << 20, 96 << 20, 5)],
)
def test_parts_in_flight_fit_the_memory_budget(part_size, budget, expected):
    assert parts_in_flight(part_size, budget) == expected


def test_parts_alive_stay_within_the_budget_for_the_default_part_size():
    part_size = 32 << 20
    budget = PipelineSettings().part_budget
    in_flight = parts_in_flight(part_size, budget)
    # waiting or uploading, plus the one being filled
    assert in_flight >= 1
    assert (in_flight + 1) * part_size <= budget <= 96 << 20
