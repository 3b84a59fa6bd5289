from __future__ import annotations

import pytest

from workers.engine.errors import InvalidInput
from workers.engine.selection import select

IDS = ["e", "b", "a", "d", "c"]
SCORES = [0.5, 0.9, 0.5, 0.1, 0.5]  # a, c, e tie at 0.5


def test_top_k_ranked_with_ties_by_id() -> None:
    assert select(IDS, SCORES, rule="top_k", value=3) == ["b", "a", "c"]
    assert select(IDS, SCORES, rule="top_k", value=4.0) == ["b", "a", "c", "e"]
    assert select(IDS, SCORES, rule="top_k", value=99) == ["b", "a", "c", "e", "d"]


def test_top_fraction_rounds_up() -> None:
    assert select(IDS, SCORES, rule="top_fraction", value=0.2) == ["b"]
    assert select(IDS, SCORES, rule="top_fraction", value=0.3) == ["b", "a"]  # ceil(1.5)
    assert select(IDS, SCORES, rule="top_fraction", value=1.0) == ["b", "a", "c", "e", "d"]
    ten = [str(i) for i in range(10)]
    assert len(select(ten, [0.0] * 10, rule="top_fraction", value=0.3)) == 3  # not 4


def test_threshold_inclusive() -> None:
    assert select(IDS, SCORES, rule="threshold", value=0.5) == ["b", "a", "c", "e"]
    assert select(IDS, SCORES, rule="threshold", value=1.0) == []


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        ("top_k", 0),
        ("top_k", 2.5),
        ("top_k", -1),
        ("top_fraction", 0.0),
        ("top_fraction", 1.5),
        ("threshold", float("nan")),
        ("top_k", True),
        ("median", 1.0),
    ],
)
def test_bad_values_raise(rule: str, value: float) -> None:
    with pytest.raises(InvalidInput):
        select(IDS, SCORES, rule=rule, value=value)  # type: ignore[arg-type]


def test_length_mismatch_raises() -> None:
    with pytest.raises(InvalidInput):
        select(IDS, SCORES[:-1], rule="top_k", value=1)
