"""Diversity of records in an embedding space (seed 003 §4): per-record scores, set selection
and dataset-level measures.

Geometry. Every function takes embeddings g(x_i) as the rows of X [N, H] (``embeddings`` makes
them) and works on the unit rows u_i = g(x_i) / ‖g(x_i)‖ with the cosine distance

    d(x_i, x_j) = 1 − cos(g(x_i), g(x_j)) = ‖u_i − u_j‖² / 2   ∈ [0, 2]

(clamped at 0 against rounding), the distance the seed suggests for sentence embeddings (§4.1)
and the one DEITA uses. Norms of LM hidden states carry little meaning, so herding and k-means
also run on the unit rows: all five tools see the same geometry. A zero or non-finite row has
no direction and is refused (``InvalidInput``). Sums run in at least float32, on ``device``
when given (else where X is); nothing of size N × N is ever held.

Per record (§4.1). The distance to the j-th nearest other record (eq. 26)

    kNN_i^j = d(g(x_i), g(N_j(x_i)))

is ``knn_distance(X, k)`` (``reduce="kth"``: j = k exactly as eq. 26; ``reduce="mean"``: the
mean over j = 1..k, a smoother variant). A record is never its own neighbour; an exact
duplicate elsewhere is, at distance 0. Rows are scored in blocks of B rows ([B, N] at a time).

Selection (§4.3). Each returns indices into X in pick order; ties go to the lowest index.
  ``k_center_greedy``  Alg. 2 (Sener & Savarese 2017): u = argmax_{i ∉ S_b} min_{j ∈ S_b} d(i, j),
                       the greedy 2-approximation of the minimax facility location, eq. 38.
                       With no existing pool S_b^0 the seed leaves the start open (random points
                       or k-means centres); we take one uniformly random point for ``seed``, as
                       the reference implementation does, and it counts toward the budget b.
  ``herding``          Alg. 3 (Harvey & Samadi 2014): u = argmin_{i ∉ S_b}
                       ‖μ − (Σ_{j ∈ S_b} u_j + u_i) / (|S_b| + 1)‖²,  μ = N⁻¹ Σ_i u_i.
  ``qdit``             Alg. 5 (Bukharin & Zhao 2023): u = argmax_{i ∉ S_b}
                       (1 − α) D^FL(S_b ∪ {i}) / N + α q_i  with the facility location (eq. 40)
                       D^FL(S) = Σ_{x_j} max_{x_i ∈ S} sim(x_i, x_j),  sim = cos,
                       and max over the empty set = 0, so negative cosines never count (as in
                       apricot/submodlib; the FL function is then monotone submodular).
                       α weighs *quality*, as in the seed and the paper: α = 0 is pure
                       facility-location greedy, α = 1 is top-quality. Dividing D^FL by N (the
                       mean coverage, in [0, 1]) keeps the meaning of α independent of N; it
                       changes nothing at α ∈ {0, 1}. Quality scores should be on a comparable
                       scale (e.g. [0, 1]). Run as lazy greedy (Minoux 1978): the objective is
                       submodular, so a stale gain bounds the fresh one and few are recomputed;
                       the picks equal those of plain greedy (up to float rounding in near-ties).
  ``deita``            Alg. 6 (Liu et al. 2023b, "Repr Filter"): records in descending score
                       (DEITA's score is complexity × quality, G_CQ); the first is kept, each
                       next one is kept iff d(u, N_0(u)) > τ for its nearest already-kept
                       neighbour N_0(u), until b are kept. DEITA's code keeps a record iff its
                       cosine *similarity* to every kept one is ≤ a threshold (0.9): that is
                       τ = 1 − 0.9 = 0.1 here (the seed's strict ">" differs only at equality).
                       If the candidates run out first, fewer than b indices are returned.

Dataset level (§4.1-4.2).
  ``vendi_score``       VS = exp(H(λ̄)), H the Shannon entropy (natural log) of the eigenvalues
                        λ̄ of K/N with the cosine kernel K_ij = cos(x_i, x_j) (Friedman & Dieng
                        2023); order q ≠ 1 gives the Rényi form of eq. 35,
                        exp(log(Σ λ̄^q) / (1 − q)) (the seed's log₂ inside exp is a typo: with it
                        N orthogonal points would not score N). With U = [u_i] [N, H],
                        K/N = U Uᵀ/N and Uᵀ U/N [H, H] share their non-zero eigenvalues, so the
                        smaller of the two is decomposed. 1 ≤ VS ≤ min(N, H): 1 for identical
                        records, N for N orthogonal ones.
  ``knn_mean_distance`` D^kNN = N⁻¹ Σ_i kNN_i^k (eq. 28 at k = 1).
  ``kmeans_inertia``    D^inertia = Σ_j Σ_{x_i ∈ C_j} ‖u_i − μ_j‖² (eq. 29) of seeded k-means
                        (scikit-learn, k-means++) on the unit rows.
"""

from __future__ import annotations

import heapq
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from workers.engine.errors import InvalidInput

Reduce = Literal["kth", "mean"]

BLOCK_ELEMENTS = 1 << 24
"""Default size of a [B, N] block of similarities (64 MiB in float32): B = max(1, this // N)."""


def unit_rows(x: Tensor, *, device: torch.device | str | None = None) -> Tensor:
    """u_i = g(x_i) / ‖g(x_i)‖ [N, H] in at least float32 on ``device`` (default: x's)."""
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidInput(f"embeddings must be a 2-D tensor [N, H], got {shape}")
    n, h = x.shape
    if n == 0 or h == 0:
        raise InvalidInput(f"no embeddings to compare: shape {(n, h)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(device=device if device is not None else x.device, dtype=dtype)
    bad = (~torch.isfinite(x).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise InvalidInput(f"{len(bad)} embeddings have non-finite values, rows {bad[:10]}")
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = (norms[:, 0] == 0).nonzero().flatten().tolist()
    if zero:
        raise InvalidInput(
            f"{len(zero)} embeddings are zero vectors (no direction, no cosine), rows {zero[:10]}"
        )
    return x / norms


def _block_rows(n: int, block_size: int | None) -> int:
    if block_size is None:
        return max(1, BLOCK_ELEMENTS // n)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidInput(f"block_size must be an integer >= 1, got {block_size!r}")
    return block_size


def _count(value: object, name: str, low: int, high: int) -> int:
    """An integer in [low, high] (a count such as k or a budget b), else ``InvalidInput``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidInput(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def _per_record(values: Sequence[float] | Tensor, n: int, name: str) -> list[float]:
    """One finite float per record."""
    out = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    if len(out) != n:
        raise InvalidInput(f"{name} has {len(out)} values for {n} records")
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise InvalidInput(f"{name} must be finite; not at records {bad[:10]}")
    return out


def _distances_to(u: Tensor, j: int) -> Tensor:
    """d(x_i, x_j) for every i [N]."""
    return (1.0 - u @ u[j]).clamp_min(0.0)


# --- per record ---------------------------------------------------------------------------------


def knn_distance(
    x: Tensor,
    k: int = 1,
    *,
    reduce: Reduce = "kth",
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """kNN_i^k (eq. 26) [N] on the CPU: cosine distance of each record to its k-th nearest other
    record (``reduce="kth"``) or the mean over its k nearest (``"mean"``). Higher = more unique.

    Needs 1 ≤ k ≤ N − 1. ``block_size`` rows are scored at a time (default: [B, N] ≤ 2^24).
    """
    if reduce not in ("kth", "mean"):
        raise InvalidInput(f"reduce must be 'kth' or 'mean', got {reduce!r}")
    u = unit_rows(x, device=device)
    n = u.shape[0]
    k = _count(k, "k (neighbours other than the record itself)", 1, n - 1)
    rows = _block_rows(n, block_size)
    out = torch.empty(n, dtype=u.dtype, device=u.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sim = u[start:stop] @ u.T  # [B, N]
        local = torch.arange(stop - start, device=u.device)
        sim[local, local + start] = -math.inf  # not its own neighbour
        nearest = (1.0 - sim.topk(k, dim=1).values).clamp_min(0.0)  # [B, k], ascending
        out[start:stop] = nearest[:, k - 1] if reduce == "kth" else nearest.mean(dim=1)
    return out.cpu()


def covering_radius(
    x: Tensor,
    selected: Sequence[int] | Tensor,
    *,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """max_i min_{j ∈ S} d(x_i, x_j): the objective k-center minimises (eq. 38)."""
    u = unit_rows(x, device=device)
    n = u.shape[0]
    chosen = _indices(selected, n, "selected")
    if not chosen:
        raise InvalidInput("selected is empty: no covering radius")
    centres = u[torch.tensor(chosen, device=u.device)]
    rows = _block_rows(len(chosen), block_size)
    radius = 0.0
    for start in range(0, n, rows):
        nearest = (1.0 - (u[start : start + rows] @ centres.T).amax(dim=1)).clamp_min(0.0)
        radius = max(radius, float(nearest.max()))
    return radius


def facility_location(
    x: Tensor,
    selected: Sequence[int] | Tensor,
    *,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """D^FL(S) = Σ_j max(0, max_{i ∈ S} cos(x_i, x_j)) (eq. 40), the diversity QDIT maximises;
    0 for the empty set."""
    u = unit_rows(x, device=device)
    n = u.shape[0]
    chosen = _indices(selected, n, "selected")
    if not chosen:
        return 0.0
    centres = u[torch.tensor(chosen, device=u.device)]
    rows = _block_rows(len(chosen), block_size)
    total = 0.0
    for start in range(0, n, rows):
        total += float((u[start : start + rows] @ centres.T).amax(dim=1).clamp_min(0.0).sum())
    return total


def _indices(indices: Sequence[int] | Tensor, n: int, name: str) -> list[int]:
    out = []
    for i in indices.tolist() if isinstance(indices, Tensor) else indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < n:
            raise InvalidInput(f"{name} must hold record indices in [0, {n}), got {i!r}")
        out.append(int(i))
    if len(set(out)) != len(out):
        raise InvalidInput(f"{name} has repeated indices")
    return out


# --- selection ----------------------------------------------------------------------------------


def k_center_greedy(
    x: Tensor,
    b: int,
    *,
    initial: Sequence[int] = (),
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[int]:
    """Alg. 2: b new centres, each the record farthest from its nearest centre so far.

    ``initial`` is the existing pool S_b^0 (not returned). Without one, the first pick is a
    uniformly random record drawn from ``seed`` (a forked generator; global RNG untouched).
    O(b · N · H): one distance row per pick updates every record's distance to its nearest
    centre.
    """
    u = unit_rows(x, device=device)
    n = u.shape[0]
    pool = _indices(initial, n, "initial")
    b = _count(b, "budget b", 1, n - len(pool))
    nearest = torch.full((n,), math.inf, dtype=u.dtype, device=u.device)
    chosen = torch.zeros(n, dtype=torch.bool, device=u.device)

    def add(j: int) -> None:
        torch.minimum(nearest, _distances_to(u, j), out=nearest)
        chosen[j] = True

    for j in pool:
        add(j)
    picks: list[int] = []
    if not pool:
        generator = torch.Generator().manual_seed(seed)
        picks.append(int(torch.randint(n, (1,), generator=generator)))
        add(picks[0])
    while len(picks) < b:
        j = int(torch.argmax(nearest.masked_fill(chosen, -math.inf)))
        picks.append(j)
        add(j)
    return picks


def herding(x: Tensor, b: int, *, device: torch.device | str | None = None) -> list[int]:
    """Alg. 3: grow S_b so its mean embedding tracks the mean μ of all records.

    With s = Σ_{S_b} u_j and t = |S_b|, the objective of line 4 is ‖c − u_i‖² / (t + 1)² with
    c = (t + 1) μ − s, so one matrix-vector product per pick ranks every candidate.
    """
    u = unit_rows(x, device=device)
    n = u.shape[0]
    b = _count(b, "budget b", 1, n)
    mu = u.mean(dim=0)
    total = torch.zeros_like(mu)
    squared = (u * u).sum(dim=1)
    chosen = torch.zeros(n, dtype=torch.bool, device=u.device)
    picks: list[int] = []
    for t in range(b):
        c = (t + 1) * mu - total
        objective = (c @ c) - 2.0 * (u @ c) + squared  # ‖c − u_i‖²
        j = int(torch.argmin(objective.masked_fill(chosen, math.inf)))
        picks.append(j)
        chosen[j] = True
        total += u[j]
    return picks


def qdit(
    x: Tensor,
    quality: Sequence[float] | Tensor,
    b: int,
    *,
    alpha: float,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> list[int]:
    """Alg. 5: greedy on (1 − α) D^FL(S_b ∪ {i}) / N + α q_i (module docstring for conventions).

    ``alpha`` in [0, 1]: 0 is pure facility-location greedy, 1 is the b highest ``quality``.
    """
    u = unit_rows(x, device=device)
    n = u.shape[0]
    q = _per_record(quality, n, "quality")
    b = _count(b, "budget b", 1, n)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise InvalidInput(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if alpha == 1.0:
        return sorted(range(n), key=lambda i: (-q[i], i))[:b]

    coverage = torch.zeros(n, dtype=u.dtype, device=u.device)  # max(0, max_{S_b} cos(·, x_j))

    def value(gain: float, i: int) -> float:
        return (1.0 - alpha) * gain / n + alpha * q[i]

    heap: list[tuple[float, int]] = []
    rows = _block_rows(n, block_size)
    for start in range(0, n, rows):  # first gains, S_b = ∅: Σ_j max(0, cos(x_i, x_j))
        gains = (u[start : start + rows] @ u.T).clamp_min(0.0).sum(dim=1).tolist()
        heap.extend((-value(g, start + r), start + r) for r, g in enumerate(gains))
    heapq.heapify(heap)
    fresh_at = [0] * n  # the |S_b| at which each heap value was computed
    picks: list[int] = []
    while len(picks) < b:
        _, i = heapq.heappop(heap)
        if fresh_at[i] == len(picks):
            picks.append(i)
            torch.maximum(coverage, u @ u[i], out=coverage)
            continue
        gain = float((u @ u[i] - coverage).clamp_min(0.0).sum())
        fresh_at[i] = len(picks)
        heapq.heappush(heap, (-value(gain, i), i))
    return picks


def deita(
    x: Tensor,
    scores: Sequence[float] | Tensor,
    b: int,
    *,
    tau: float,
    device: torch.device | str | None = None,
) -> list[int]:
    """Alg. 6: best-scored first, skipping records within cosine distance ``tau`` of a kept one.

    Returns up to b indices in descending score (ties by index); fewer if the pool runs out.
    ``tau`` in [0, 2]; DEITA's released similarity threshold 0.9 is ``tau=0.1``.
    """
    u = unit_rows(x, device=device)
    n = u.shape[0]
    s = _per_record(scores, n, "scores")
    b = _count(b, "budget b", 1, n)
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau <= 2:
        raise InvalidInput(f"tau must be a cosine distance in [0, 2], got {tau!r}")
    nearest = torch.full((n,), math.inf, dtype=u.dtype, device=u.device)  # d to nearest kept
    picks: list[int] = []
    for i in sorted(range(n), key=lambda i: (-s[i], i)):
        if len(picks) == b:
            break
        if picks and not float(nearest[i]) > tau:
            continue
        picks.append(i)
        torch.minimum(nearest, _distances_to(u, i), out=nearest)
    return picks


# --- dataset level ------------------------------------------------------------------------------


def vendi_score(x: Tensor, *, q: float = 1.0, device: torch.device | str | None = None) -> float:
    """VS of order q with the cosine kernel: the effective number of distinct records."""
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q < math.inf:
        raise InvalidInput(f"order q must be a finite number > 0, got {q!r}")
    u = unit_rows(x, device=device)
    n, h = u.shape
    gram = (u.T @ u if h < n else u @ u.T).double() / n  # same non-zero spectrum as K / N
    lam = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    lam = lam[lam > 0] / lam.sum()
    if q == 1:
        entropy = -float((lam * lam.log()).sum())
    else:
        entropy = math.log(float((lam**q).sum())) / (1.0 - q)
    return math.exp(entropy)


def knn_mean_distance(
    x: Tensor,
    k: int = 1,
    *,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """D^kNN (eq. 28): the mean over records of the distance to the k-th nearest other one."""
    return float(knn_distance(x, k, block_size=block_size, device=device).double().mean())


def kmeans_inertia(x: Tensor, n_clusters: int, *, seed: int = 0, n_init: int = 4) -> float:
    """D^inertia (eq. 29) of k-means with ``n_clusters`` on the unit rows (best of ``n_init``
    k-means++ starts drawn from ``seed``). Higher = records spread further from the centres."""
    from sklearn.cluster import KMeans  # worker dependency, imported where it is used

    u = unit_rows(x, device="cpu")
    n_clusters = _count(n_clusters, "n_clusters", 1, u.shape[0])
    n_init = _count(n_init, "n_init", 1, 1000)
    model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    model.fit(u.numpy())
    return float(model.inertia_)


@dataclass(frozen=True)
class DiversityReport:
    """Dataset-level diversity of N records: Vendi score, D^kNN (eq. 28), D^inertia (eq. 29)."""

    n: int
    vendi: float
    knn_mean: float
    k: int
    inertia: float
    n_clusters: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def diversity_report(
    x: Tensor,
    *,
    n_clusters: int,
    k: int = 1,
    seed: int = 0,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> DiversityReport:
    """The three dataset-level measures of the module docstring, for one embedding matrix."""
    vendi = vendi_score(x, device=device)  # validates x first
    return DiversityReport(
        n=int(x.shape[0]),
        vendi=vendi,
        knn_mean=knn_mean_distance(x, k, block_size=block_size, device=device),
        k=k,
        inertia=kmeans_inertia(x, n_clusters, seed=seed),
        n_clusters=n_clusters,
        seed=seed,
    )
