"""Diversity (seed 003 §4): each formula on hand-worked cases, the fast paths against slow
literal references of eq. 26, eq. 40 and Algs. 2, 3, 5, 6, and the properties the algorithms
promise (covering radius, thresholds, score order, determinism)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from workers.engine.diversity import (
    covering_radius,
    deita,
    diversity_report,
    facility_location,
    herding,
    k_center_greedy,
    kmeans_inertia,
    knn_distance,
    knn_mean_distance,
    qdit,
    unit_rows,
    vendi_score,
)
from workers.engine.errors import InvalidInput

SQRT3 = math.sqrt(3.0)


def _angles(*degrees: float, scales: tuple[float, ...] | None = None) -> Tensor:
    """Points on rays at the given angles in 2-D (float64), optionally not of unit length."""
    scales = scales or (1.0,) * len(degrees)
    return torch.tensor(
        [
            [s * math.cos(math.radians(a)), s * math.sin(math.radians(a))]
            for a, s in zip(degrees, scales, strict=True)
        ],
        dtype=torch.float64,
    )


# P: four points at 0°, 60°, 90°, 180°; cosine distances d = 1 − cos(angle between):
#          p0    p1          p2          p3
#   p0     0     1/2         1           2
#   p1     1/2   0           1 − √3/2    3/2
#   p2     1     1 − √3/2    0           1
#   p3     2     3/2         1           0
# (1 − √3/2 ≈ 0.1340). Lengths differ on purpose: cosine ignores them.
P = _angles(0, 60, 90, 180, scales=(1.0, 2.0, 0.5, 3.0))
NEAR = 1 - SQRT3 / 2


def _clustered(seed: int, clusters: int = 20, per: int = 15, dim: int = 32) -> Tensor:
    """``clusters`` tight groups around random directions: within-group cosine distances of a
    few hundredths, between groups ~1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g, dtype=torch.float64)
    centres = centres / centres.norm(dim=1, keepdim=True)
    noise = 0.04 * torch.randn(clusters, per, dim, generator=g, dtype=torch.float64)
    return (centres[:, None, :] + noise).reshape(clusters * per, dim)


def _distance_matrix(x: Tensor) -> Tensor:
    """Slow reference: d(x_i, x_j) for all pairs, from the definition."""
    n = x.shape[0]
    out = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            cos = torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm())
            out[i, j] = max(0.0, 1.0 - float(cos))
    return out


# --- kNN (eq. 26, 28) ---------------------------------------------------------------------------


def test_knn_distance_by_hand() -> None:
    # nearest other: p0 → p1 (1/2), p1 → p2 (1 − √3/2), p2 → p1 (1 − √3/2), p3 → p2 (1)
    assert knn_distance(P, 1).tolist() == pytest.approx([0.5, NEAR, NEAR, 1.0])
    # second nearest: p0 → p2 (1), p1 → p0 (1/2), p2 → p0 or p3 (1), p3 → p1 (3/2)
    assert knn_distance(P, 2).tolist() == pytest.approx([1.0, 0.5, 1.0, 1.5])
    # mean of the two nearest
    expected = [0.75, (NEAR + 0.5) / 2, (NEAR + 1) / 2, 1.25]
    assert knn_distance(P, 2, reduce="mean").tolist() == pytest.approx(expected)
    # eq. 28: the mean of kNN^1
    assert knn_mean_distance(P) == pytest.approx((0.5 + 2 * NEAR + 1.0) / 4)


def test_knn_duplicate_is_a_neighbour_at_distance_zero() -> None:
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert knn_distance(x, 1).tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("block_size", [1, 3, 7, None])
@pytest.mark.parametrize("reduce", ["kth", "mean"])
def test_knn_blocks_match_the_full_matrix(block_size: int | None, reduce: str) -> None:
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = _distance_matrix(x)
    d.fill_diagonal_(math.inf)
    nearest = d.sort(dim=1).values[:, :4]
    expected = nearest[:, 3] if reduce == "kth" else nearest.mean(dim=1)
    got = knn_distance(x, 4, reduce=reduce, block_size=block_size)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected)


# --- k-center greedy (Alg. 2) -------------------------------------------------------------------


def test_k_center_by_hand() -> None:
    # S_b^0 = {p0}: distances to it 0, 1/2, 1, 2 → p3. Nearest centre then: p1 min(1/2, 3/2)
    # = 1/2, p2 min(1, 1) = 1 → p2. Covering radius of {p0, p3, p2}: p1's 1 − √3/2.
    assert k_center_greedy(P, 2, initial=[0]) == [3, 2]
    assert covering_radius(P, [0, 3, 2]) == pytest.approx(NEAR)
    assert covering_radius(P, [0]) == pytest.approx(2.0)


def _k_center_reference(x: Tensor, b: int, first: int) -> list[int]:
    """Alg. 2 line by line: recompute min over S_b of d for every candidate at every step."""
    d = _distance_matrix(x)
    picks = [first]
    while len(picks) < b:
        rest = [i for i in range(x.shape[0]) if i not in picks]
        picks.append(max(rest, key=lambda i: (min(float(d[i, j]) for j in picks), -i)))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_reference(seed: int) -> None:
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    picks = k_center_greedy(x, 8, seed=seed)
    assert picks == _k_center_reference(x, 8, picks[0])
    assert picks == k_center_greedy(x, 8, seed=seed)  # deterministic for a seed


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("b", [20, 30])
def test_k_center_covers_clusters_better_than_random(seed: int, b: int) -> None:
    x = _clustered(seed)
    greedy = covering_radius(x, k_center_greedy(x, b, seed=seed))
    for draw in range(5):
        g = torch.Generator().manual_seed(1000 * seed + draw)
        random_pick = torch.randperm(x.shape[0], generator=g)[:b].tolist()
        assert greedy <= covering_radius(x, random_pick)


def test_k_center_first_pick_depends_on_seed_only() -> None:
    x = _clustered(0)
    firsts = {k_center_greedy(x, 1, seed=s)[0] for s in range(10)}
    assert len(firsts) > 1
    assert k_center_greedy(x, 5, seed=3) == k_center_greedy(x.clone(), 5, seed=3)


# --- herding (Alg. 3) ---------------------------------------------------------------------------


def test_herding_by_hand() -> None:
    # u0 = (1, 0), u1 = (0, 1), u2 = (0.6, 0.8); μ = (1.6/3, 1.8/3) = (0.533, 0.6).
    # t = 0: ‖μ − u_i‖² = 0.502, 0.444, 0.111 → u2.
    # t = 1: mean of {u2, u0} = (0.8, 0.4): ‖μ − ·‖² = 0.0711 + 0.04 = 0.111;
    #        mean of {u2, u1} = (0.3, 0.9): 0.0544 + 0.09 = 0.144 → u0; then u1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    assert herding(x, 3) == [2, 0, 1]


def _herding_reference(x: Tensor, b: int) -> list[int]:
    """Alg. 3 literally, on the unit rows: try every candidate's new mean."""
    u = x / x.norm(dim=1, keepdim=True)
    mu = u.mean(dim=0)
    picks: list[int] = []
    for _ in range(b):
        rest = [i for i in range(x.shape[0]) if i not in picks]

        def gap(i: int) -> float:
            return float(((mu - u[[*picks, i]].mean(dim=0)) ** 2).sum())

        picks.append(min(rest, key=lambda i: (gap(i), i)))
    return picks


@pytest.mark.parametrize("seed", [0, 1])
def test_herding_matches_reference(seed: int) -> None:
    x = torch.randn(25, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert herding(x, 10) == _herding_reference(x, 10)


# --- QDIT (Alg. 5, eq. 40) ----------------------------------------------------------------------

# Q: p0 = (1, 0), p1 = (0.6, 0.8), p2 = (0, 1);
# cos(p0, p1) = 0.6, cos(p1, p2) = 0.8, cos(p0, p2) = 0.
Q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)


def test_facility_location_by_hand() -> None:
    # D^FL({p1}) = 0.6 + 1 + 0.8; D^FL({p0, p2}) = 1 + max(0.6, 0.8) + 1
    assert facility_location(Q, [1]) == pytest.approx(2.4)
    assert facility_location(Q, [0, 2]) == pytest.approx(2.8)
    assert facility_location(Q, []) == 0.0
    # a negative cosine never counts: D^FL({(1, 0)}) over {(1, 0), (−1, 0)} is 1, not 0
    assert facility_location(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), [0]) == pytest.approx(1.0)


def test_qdit_by_hand() -> None:
    # α = 0 (facility location only): first gains Σ_j cos⁺ = 1.6, 2.4, 1.8 → p1; coverage
    # (0.6, 1, 0.8); gains p0: 1 − 0.6 = 0.4, p2: 1 − 0.8 = 0.2 → p0, then p2.
    assert qdit(Q, [0.0, 0.0, 1.0], 3, alpha=0.0) == [1, 0, 2]
    # α = 1/2, q = (0, 0, 1), objective ½·gain/3 + ½·q: 0.267, 0.4, 0.3 + 0.5 → p2; coverage
    # (0, 0.8, 1); gains p0: 1, p1: 0.6 + 0.2 = 0.8 → ½·1/3 = 0.167 vs 0.133 → p0, then p1.
    assert qdit(Q, [0.0, 0.0, 1.0], 3, alpha=0.5) == [2, 0, 1]
    # α = 1: by quality (ties by index)
    assert qdit(Q, [0.2, 0.9, 0.2], 3, alpha=1.0) == [1, 0, 2]


def _qdit_reference(x: Tensor, quality: list[float], b: int, alpha: float) -> list[int]:
    """Alg. 5 literally: evaluate (1 − α) D^FL(S_b ∪ {i}) / N + α q_i for every candidate."""
    sim = 1.0 - _distance_matrix(x)  # the clamp at 0 in _distance_matrix is on d, not on cos
    n = x.shape[0]

    def fl(selected: list[int]) -> float:
        return sum(max(0.0, max(float(sim[i, j]) for i in selected)) for j in range(n))

    picks: list[int] = []
    for _ in range(b):
        rest = [i for i in range(n) if i not in picks]
        value = {i: (1 - alpha) * fl([*picks, i]) / n + alpha * quality[i] for i in rest}
        picks.append(max(rest, key=lambda i: (value[i], -i)))
    return picks


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_qdit_matches_reference(alpha: float) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(24, 5, generator=g, dtype=torch.float64) + 0.5  # mostly positive cosines
    quality = torch.rand(24, generator=g, dtype=torch.float64).tolist()
    assert qdit(x, quality, 9, alpha=alpha, block_size=5) == _qdit_reference(x, quality, 9, alpha)


def test_qdit_extremes_are_facility_location_and_top_quality() -> None:
    g = torch.Generator().manual_seed(3)
    x = _clustered(3, clusters=6, per=6, dim=8)
    quality = torch.rand(x.shape[0], generator=g, dtype=torch.float64)
    # α = 0: plain greedy on D^FL, each pick the largest D^FL(S ∪ {i})
    fl_greedy: list[int] = []
    for _ in range(6):
        rest = [i for i in range(x.shape[0]) if i not in fl_greedy]
        fl_greedy.append(max(rest, key=lambda i: (facility_location(x, [*fl_greedy, i]), -i)))
    assert qdit(x, quality, 6, alpha=0.0) == fl_greedy
    # α = 1: the 6 best quality scores, best first
    assert qdit(x, quality, 6, alpha=1.0) == quality.argsort(descending=True)[:6].tolist()


# --- DEITA (Alg. 6) -----------------------------------------------------------------------------


def test_deita_by_hand() -> None:
    # scores order p0, p1, p2, p3; τ = 0.2: keep p0; p1 is 1/2 from p0 → keep; p2 is
    # 1 − √3/2 ≈ 0.134 from p1 → skip; p3 is 2 and 3/2 away → keep.
    assert deita(P, [4.0, 3.0, 2.0, 1.0], 4, tau=0.2) == [0, 1, 3]
    assert deita(P, [4.0, 3.0, 2.0, 1.0], 2, tau=0.2) == [0, 1]  # stops at b
    assert deita(P, [1.0, 2.0, 3.0, 4.0], 4, tau=0.0) == [3, 2, 1, 0]  # τ = 0: everything
    assert deita(P, [1.0, 2.0, 3.0, 4.0], 4, tau=1.9) == [3, 0]  # only p0 is > 1.9 from p3


def test_deita_strict_threshold_at_equality() -> None:
    # p2 and p3 are exactly 1 apart: with τ = 1 (d > τ required) p3 is not kept after p2
    x = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    assert deita(x, [2.0, 1.0], 2, tau=1.0) == [0]


@pytest.mark.parametrize("seed", range(3))
def test_deita_respects_threshold_and_score_order(seed: int) -> None:
    x = _clustered(seed, clusters=8, per=10, dim=16)
    scores = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    tau = 0.02  # about the median distance within a cluster
    picks = deita(x, scores, 20, tau=tau)
    assert len(picks) == 20
    d = _distance_matrix(x)
    assert all(d[i, j] > tau for a, i in enumerate(picks) for j in picks[a + 1 :])
    assert [scores[i] for i in picks] == sorted((scores[i] for i in picks), reverse=True)
    # every better-scored record that was skipped lies within τ of a pick made before it
    for i in range(x.shape[0]):
        if i not in picks and scores[i] > scores[picks[-1]]:
            earlier = [j for j in picks if scores[j] > scores[i]]
            assert min(float(d[i, j]) for j in earlier) <= tau
    assert picks == deita(x, scores, 20, tau=tau)
    # τ above most within-cluster distances: about one record per cluster, fewer than b
    assert len(deita(x, scores, 20, tau=0.05)) < 20


# --- dataset level ------------------------------------------------------------------------------


def test_vendi_identical_and_orthogonal() -> None:
    assert vendi_score(torch.ones(6, 3)) == pytest.approx(1.0)
    assert vendi_score(3.0 * torch.eye(5)) == pytest.approx(5.0)
    assert vendi_score(torch.eye(7)[:4]) == pytest.approx(4.0)  # N < H
    assert vendi_score(torch.eye(4), q=2.0) == pytest.approx(4.0)
    assert vendi_score(torch.ones(4, 2), q=0.5) == pytest.approx(1.0)


def test_vendi_by_hand() -> None:
    # two records at 60°: K = [[1, ½], [½, 1]], eigenvalues of K/2 are ¾ and ¼;
    # H = −(¾ ln ¾ + ¼ ln ¼) = 0.5623, VS = e^H = 1.7548
    x = _angles(0, 60)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert vendi_score(x) == pytest.approx(expected)
    # order 2: exp(−ln(¾² + ¼²)) = 1 / 0.625 = 1.6
    assert vendi_score(x, q=2.0) == pytest.approx(1.6)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_vendi_matches_the_n_by_n_kernel(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kernel = 1.0 - _distance_matrix(x)
    lam = torch.linalg.eigvalsh(kernel / shape[0]).clamp_min(0.0)
    lam = lam[lam > 1e-15]
    assert vendi_score(x) == pytest.approx(math.exp(-float((lam * lam.log()).sum())))


def test_kmeans_inertia_by_hand() -> None:
    # (1, 0), (0.8, 0.6) and their negatives: two clusters with centres ±(0.9, 0.3), each
    # point 0.1² + 0.3² = 0.1 away → 0.4. One cluster: the mean is 0, so 4 × 1 = 4.
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [-0.8, -0.6]], dtype=torch.float64)
    assert kmeans_inertia(x, 2, seed=0) == pytest.approx(0.4)
    assert kmeans_inertia(x, 1) == pytest.approx(4.0)
    assert kmeans_inertia(x, 4) == pytest.approx(0.0, abs=1e-12)


def test_kmeans_inertia_is_seeded() -> None:
    x = _clustered(0, clusters=5, per=8, dim=6)
    assert kmeans_inertia(x, 4, seed=5) == kmeans_inertia(x, 4, seed=5)


def test_diversity_report_collects_the_measures() -> None:
    report = diversity_report(P, n_clusters=2, k=1, seed=0)
    assert report.n == 4 and report.k == 1 and report.n_clusters == 2
    assert report.vendi == pytest.approx(vendi_score(P))
    assert report.knn_mean == pytest.approx(knn_mean_distance(P))
    assert report.inertia == pytest.approx(kmeans_inertia(P, 2, seed=0))
    assert set(report.to_dict()) == {"n", "vendi", "knn_mean", "k", "inertia", "n_clusters", "seed"}


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: knn_distance(P, 4),  # only 3 other records
        lambda: knn_distance(P, 0),
        lambda: knn_distance(P, 1, reduce="median"),  # type: ignore[arg-type]
        lambda: knn_distance(P, 1, block_size=0),
        lambda: knn_distance(torch.zeros(0, 3), 1),
        lambda: knn_distance(torch.ones(3), 1),
        lambda: knn_distance(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), 1),
        lambda: knn_distance(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1),
        lambda: k_center_greedy(P, 5),
        lambda: k_center_greedy(P, 0),
        lambda: k_center_greedy(P, True),  # type: ignore[arg-type]
        lambda: k_center_greedy(P, 2, initial=[0, 1, 2]),  # only one record left
        lambda: k_center_greedy(P, 1, initial=[4]),
        lambda: k_center_greedy(P, 1, initial=[1, 1]),
        lambda: herding(P, 5),
        lambda: herding(torch.zeros(0, 2), 1),
        lambda: qdit(P, [1.0, 2.0, 3.0], 2, alpha=0.5),
        lambda: qdit(P, [1.0, 2.0, 3.0, float("inf")], 2, alpha=0.5),
        lambda: qdit(P, [1.0, 2.0, 3.0, 4.0], 2, alpha=1.5),
        lambda: qdit(P, [1.0, 2.0, 3.0, 4.0], 5, alpha=0.5),
        lambda: deita(P, [1.0, 2.0, 3.0, 4.0], 5, tau=0.1),
        lambda: deita(P, [1.0, 2.0, 3.0, 4.0], 2, tau=-0.1),
        lambda: deita(P, [1.0, 2.0], 2, tau=0.1),
        lambda: vendi_score(torch.zeros(0, 2)),
        lambda: vendi_score(P, q=0.0),
        lambda: kmeans_inertia(P, 5),
        lambda: covering_radius(P, []),
        lambda: diversity_report(torch.zeros(0, 2), n_clusters=1),
    ],
)
def test_bad_input_raises_invalid_input(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        call()


def test_unit_rows_promotes_and_normalises() -> None:
    u = unit_rows(torch.tensor([[3, 4]], dtype=torch.int64))
    assert u.dtype == torch.float32 and u[0].tolist() == pytest.approx([0.6, 0.8])
    assert unit_rows(torch.ones(2, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = _clustered(0).to(torch.float32)
    quality = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(knn_distance(x, 3, device="cuda"), knn_distance(x, 3))
    assert k_center_greedy(x, 25, device="cuda") == k_center_greedy(x, 25)
    assert herding(x, 25, device="cuda") == herding(x, 25)
    assert qdit(x, quality, 25, alpha=0.5, device="cuda") == qdit(x, quality, 25, alpha=0.5)
    assert deita(x, quality, 25, tau=0.05, device="cuda") == deita(x, quality, 25, tau=0.05)
    assert vendi_score(x, device="cuda") == pytest.approx(vendi_score(x), rel=1e-4)
