"""Composed selections: filters (eqs. 4-5), picks and quotas, on hand-worked cases."""

from __future__ import annotations

import pytest
import torch

from workers.engine import diversity
from workers.engine.curation import (
    Filter,
    apply_filters,
    embedding_pick,
    percentiles,
    random_pick,
    rank_pick,
    select,
)
from workers.engine.errors import InvalidInput

IDS = ["r0", "r1", "r2", "r3", "r4", "r5"]
VALUES = [3.0, 1.0, None, 2.0, 2.0, 5.0]


def test_percentiles_are_the_empirical_cdf() -> None:
    # present values sorted: 1, 2, 2, 3, 5 (n = 5); F̂(2) = 3/5 (both 2s count), F̂(5) = 1
    assert percentiles(VALUES) == [80.0, 20.0, None, 60.0, 60.0, 100.0]


def test_filters_thresholds_are_exclusive_percentiles_inclusive_and_none_fails() -> None:
    assert apply_filters(6, [Filter(VALUES, min=1.0, max=5.0)]) == [0, 3, 4]
    assert apply_filters(6, [Filter(VALUES, min_percentile=60.0)]) == [0, 3, 4, 5]
    assert apply_filters(6, [Filter(VALUES, max_percentile=60.0)]) == [1, 3, 4]
    both = [Filter(VALUES, min_percentile=60.0), Filter([1.0, 0.0, 0.0, 0.0, 1.0, 1.0], min=0.5)]
    assert apply_filters(6, both) == [0, 4, 5]
    assert apply_filters(6, []) == list(range(6))
    with pytest.raises(InvalidInput, match="6 records"):
        apply_filters(6, [Filter([1.0])])


def test_rank_and_random_picks() -> None:
    descending = rank_pick(VALUES, IDS, descending=True)
    assert descending(list(range(6)), 10) == [5, 0, 3, 4, 1]  # ties 2.0: r3 before r4; None never
    assert rank_pick(VALUES, IDS, descending=False)(list(range(6)), 2) == [1, 3]
    shuffled = random_pick(IDS, seed=3)
    assert shuffled([0, 1, 2, 3], 4) == shuffled([3, 2, 1, 0], 4)  # not the candidates' order
    assert sorted(shuffled([0, 1, 2, 3], 4)) == [0, 1, 2, 3]
    assert shuffled(list(range(6)), 6) != random_pick(IDS, seed=4)(list(range(6)), 6)


def test_quotas_merge_round_robin_and_cap_each_group() -> None:
    groups = ["b", "a", "b", "a", "b", "b"]
    values = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    pick = rank_pick(values, IDS, descending=True)
    # per group by value: a -> [1, 3], b -> [0, 2, 4, 5]; capped at 2; round-robin a, b, a, b
    assert select(range(6), 10, pick, groups=groups, max_per_group=2) == [1, 0, 3, 2]
    assert select(range(6), 3, pick, groups=groups, max_per_group=2) == [1, 0, 3]
    assert select(range(6), 3, pick) == [0, 1, 2]
    with pytest.raises(InvalidInput):
        select(range(6), 0, pick)


def test_embedding_picks_run_on_the_candidates_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    candidates = [1, 3, 4, 7, 8, 10, 11]
    sub = x[torch.tensor(candidates)]
    k_center = embedding_pick(x, "k_center", seed=2)(candidates, 3)
    assert k_center == [candidates[j] for j in diversity.k_center_greedy(sub, 3, seed=2)]
    herd = embedding_pick(x, "herding")(candidates, 4)
    assert herd == [candidates[j] for j in diversity.herding(sub, 4)]
    quality = [float(i) for i in range(12)]
    # α = 1: pure quality, best first; asc flips which is best
    assert embedding_pick(x, "qdit", scores=quality, alpha=1.0)(candidates, 3) == [11, 10, 8]
    top_low = embedding_pick(x, "qdit", scores=quality, alpha=1.0, descending=False)
    assert top_low(candidates, 2) == [1, 3]
    # DEITA with a tiny τ keeps score order; records without a score are never picked
    scores = [None if i == 11 else float(i) for i in range(12)]
    assert embedding_pick(x, "deita", scores=scores, tau=1e-9)(candidates, 3) == [10, 8, 7]
