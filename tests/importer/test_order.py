"""The registration order: every path after the staged paths it references, whatever the batch size."""

from __future__ import annotations

import random

from niks3d.importer.order import registration_order


def _check_references_first(graph: dict[str, tuple[str, ...]], order: list[str]) -> None:
    position = {h: i for i, h in enumerate(order)}
    for hash_part in order:
        for ref in graph[hash_part]:
            if ref in graph:
                assert position[ref] < position[hash_part], (hash_part, ref)


def test_references_come_first_and_levels_are_counted():
    graph = {"d": ("c", "b"), "c": ("b", "published"), "b": (), "a": ("published",), "e": ("d",)}
    order, levels = registration_order(graph)
    assert order == ["a", "b", "c", "d", "e"]
    assert levels == 4
    _check_references_first(graph, order)


def test_a_deep_random_dag_is_ordered_in_one_pass():
    rng = random.Random(15)
    names = [f"p{i:05d}" for i in range(3000)]
    graph = {n: tuple(rng.sample(names[max(0, i - 20) : i], min(i, rng.randint(0, 4)))) for i, n in enumerate(names)}
    shuffled = dict(rng.sample(list(graph.items()), len(graph)))
    order, levels = registration_order(shuffled)
    assert sorted(order) == names
    assert levels > 100
    _check_references_first(graph, order)


def test_paths_on_a_cycle_are_left_out():
    graph = {"a": ("b",), "b": ("a",), "c": ("a",), "d": ()}
    assert registration_order(graph) == (["d"], 1)


def test_nothing_staged():
    assert registration_order({}) == ([], 0)
