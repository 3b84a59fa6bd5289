"""Composing scores into a selection (seed 003 §2, §4.3): filter, then rank or pick, under quotas.

Filters (eqs. 4-5). A record x survives a filter on a score f when

    τ_min < f(x) < τ_max                           (eq. 4, thresholds, exclusive)
    P_min ≤ 100 · F̂_f(f(x)) ≤ P_max                (eq. 5, percentiles, inclusive)

where F̂_f is the empirical CDF of f over the records that have a value: F̂_f(v) = |{y : f(y) ≤ v}|
/ n. A record with no value (None) fails every filter on that score. Filters compose by "and".

Picks order the surviving candidates; the first ``budget`` are the selection. "rank" sorts by
one score (ties by record id), "random" by a seeded permutation; the diversity picks (k-center,
herding, QDIT, DEITA: ``workers.engine.diversity``) run on the candidates' embeddings.

Quotas. With at most q records per group (a subtask, a source), the pick runs within each group
with budget min(q, |group|), and the groups' picks are merged round-robin (groups by name, each in
its own pick order) until the budget is reached: every group gets its turn before any gets a
second, and no group exceeds q. Within a group the diversity picks therefore diversify that group.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.engine import diversity
from workers.engine.errors import InvalidInput

Values = Sequence[float | None]
PickFn = Callable[[list[int], int], list[int]]
"""(candidate indices, budget) → picked indices in pick order."""


@dataclass(frozen=True)
class Filter:
    values: Values
    min: float | None = None
    max: float | None = None
    min_percentile: float | None = None
    max_percentile: float | None = None


def percentiles(values: Values) -> list[float | None]:
    """100 · F̂(v) for each value (None stays None): the share of values ≤ it, in percent."""
    present = sorted(v for v in values if v is not None)
    n = len(present)
    return [None if v is None else 100.0 * bisect.bisect_right(present, v) / n for v in values]


def apply_filters(n: int, filters: Sequence[Filter]) -> list[int]:
    """Indices 0..n-1 that pass every filter, in order."""
    kept = list(range(n))
    for f in filters:
        if len(f.values) != n:
            raise InvalidInput(f"a filter has {len(f.values)} values for {n} records")
        needs_rank = f.min_percentile is not None or f.max_percentile is not None
        ranks = percentiles(f.values) if needs_rank else None

        def passes(i: int, f: Filter = f, ranks: list[float | None] | None = ranks) -> bool:
            v = f.values[i]
            if v is None:
                return False
            if (f.min is not None and not v > f.min) or (f.max is not None and not v < f.max):
                return False
            if ranks is not None:
                p = ranks[i]
                assert p is not None  # v is not None
                if f.min_percentile is not None and p < f.min_percentile:
                    return False
                if f.max_percentile is not None and p > f.max_percentile:
                    return False
            return True

        kept = [i for i in kept if passes(i)]
    return kept


def rank_pick(values: Values, record_ids: Sequence[str], *, descending: bool) -> PickFn:
    """Best value first (ties by record id); records without a value come never."""

    def pick(candidates: list[int], budget: int) -> list[int]:
        scored = [i for i in candidates if values[i] is not None]
        sign = -1.0 if descending else 1.0
        scored.sort(key=lambda i: (sign * float(values[i]), record_ids[i]))  # type: ignore[arg-type]
        return scored[:budget]

    return pick


def random_pick(record_ids: Sequence[str], *, seed: int) -> PickFn:
    """A seeded shuffle of the candidates, in record-id order first so the pick does not depend
    on the dataset's order."""

    def pick(candidates: list[int], budget: int) -> list[int]:
        ordered = sorted(candidates, key=lambda i: record_ids[i])
        random.Random(seed).shuffle(ordered)
        return ordered[:budget]

    return pick


def _oriented(values: Values, candidates: list[int], descending: bool) -> list[float]:
    """Candidate values with higher = better (asc scores negated); all must be present."""
    missing = [i for i in candidates if values[i] is None]
    if missing:
        raise InvalidInput(f"{len(missing)} candidates have no score to pick by")
    sign = 1.0 if descending else -1.0
    return [sign * float(values[i]) for i in candidates]  # type: ignore[arg-type]


def embedding_pick(
    x: Tensor,
    method: str,
    *,
    seed: int = 0,
    scores: Values | None = None,
    descending: bool = True,
    alpha: float = 0.5,
    tau: float = 0.1,
) -> PickFn:
    """k-center greedy, herding, QDIT (``scores`` = quality) or DEITA (``scores``) on the
    candidates' rows of the embeddings ``x`` [N, H]. QDIT's quality is min-max scaled to [0, 1]
    over the candidates, as its facility-location term is (both then weigh alike at α = 0.5).
    Candidates without a score are not picked by QDIT or DEITA."""

    def pick(candidates: list[int], budget: int) -> list[int]:
        if method in ("qdit", "deita"):
            if scores is None:
                raise InvalidInput(f"{method} needs scores")
            candidates = [i for i in candidates if scores[i] is not None]
        if not candidates:
            return []
        budget = min(budget, len(candidates))
        sub = x[torch.tensor(candidates)]
        if method == "k_center":
            local = diversity.k_center_greedy(sub, budget, seed=seed)
        elif method == "herding":
            local = diversity.herding(sub, budget)
        elif method == "qdit":
            q = torch.tensor(_oriented(scores, candidates, descending), dtype=torch.float64)  # type: ignore[arg-type]
            span = float(q.max() - q.min())
            q = (q - q.min()) / span if span > 0 else torch.zeros_like(q)
            local = diversity.qdit(sub, q, budget, alpha=alpha)
        elif method == "deita":
            d = _oriented(scores, candidates, descending)  # type: ignore[arg-type]
            local = diversity.deita(sub, d, budget, tau=tau)
        else:
            raise InvalidInput(f"unknown embedding pick {method!r}")
        return [candidates[j] for j in local]

    return pick


def select(
    candidates: Sequence[int],
    budget: int,
    pick: PickFn,
    *,
    groups: Sequence[str] | None = None,
    max_per_group: int | None = None,
) -> list[int]:
    """The selection in pick order: ``pick`` over all candidates, or per group under a quota
    merged round-robin (module docstring)."""
    if budget < 1:
        raise InvalidInput(f"budget must be >= 1, got {budget}")
    candidates = list(candidates)
    if max_per_group is None:
        return pick(candidates, min(budget, len(candidates))) if candidates else []
    if groups is None or max_per_group < 1:
        raise InvalidInput("a quota needs a group per record and max_per_group >= 1")
    by_group: dict[str, list[int]] = {}
    for i in candidates:
        by_group.setdefault(groups[i], []).append(i)
    picked = {
        name: pick(members, min(max_per_group, len(members)))
        for name, members in sorted(by_group.items())
    }
    out: list[int] = []
    depth = 0
    while len(out) < budget and any(depth < len(p) for p in picked.values()):
        for name in sorted(picked):
            if depth < len(picked[name]) and len(out) < budget:
                out.append(picked[name][depth])
        depth += 1
    return out
