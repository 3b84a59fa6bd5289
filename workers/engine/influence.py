"""Influence of pool examples z_i on validation probes z_v, aggregated over subtasks.

Per pair, summed over the E warmup checkpoints (seed 002 §2.1 and app. F):
    tracin: Inf(z_i, z_v) = Σ_e η̄_e <φ_e(z_i), ψ_e(z_v)>
    less  : Inf(z_i, z_v) = Σ_e w_e cos(φ_e(z_i), ψ_e(z_v)),   w_e = η̄_e / Σ_e' η̄_e'
with φ_e the pool features and ψ_e the probe features (SGD gradients), projected. The
``method`` here is only this aggregation; what φ_e is belongs to the valuation method: plain
SGD gradients for TracIn as published (Pruthi et al. 2020, TracInCP: valuation method
``tracin``), LESS's Adam features Γ(z_i) for ``tracin_adam`` (LESS's Adam influence before its
cosine, seed 002 app. F) and for ``less``. Then
(§2.2) Inf(z_i, D_V) = max_j |D_V^(j)|⁻¹ Σ_{z_v ∈ D_V^(j)} Inf(z_i, z_v): the mean over each
subtask's probes, the max over subtasks. Shapes: N pool records, M probes, d features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.features import FeatureSet
from workers.engine.valuation_method import ScoringInput, ValuationMethod

DEFAULT_SUBTASK = "default"
"""Subtask of probes whose ``subtask`` is None."""

Method = Literal["less", "tracin"]


@dataclass
class ShardScores:
    """Inf(z_i, D_V) [N] for a shard of the pool, and the per-subtask means [N] it maxes over."""

    record_ids: list[str]
    scores: Tensor
    per_subtask: dict[str, Tensor]


def checkpoint_weights(mean_lrs: Sequence[float]) -> Tensor:
    """LESS checkpoint weights w_e = η̄_e / Σ η̄ [E] (float64), summing to 1."""
    if not mean_lrs:
        raise InvalidInput("need at least one checkpoint learning rate")
    lrs = torch.tensor([float(lr) for lr in mean_lrs], dtype=torch.float64)
    if not bool(torch.isfinite(lrs).all()) or bool((lrs < 0).any()) or float(lrs.sum()) <= 0:
        raise InvalidInput(f"mean learning rates must be finite, >= 0, not all 0: {list(mean_lrs)}")
    return lrs / lrs.sum()


def cosine_matrix(pool: Tensor, probes: Tensor) -> Tensor:
    """cos(pool_i, probe_v) [N, M] for pool [N, d], probes [M, d], in at least float32.

    A zero vector (e.g. an example whose gradient vanishes) has no direction: its similarity
    to everything is defined as 0, rather than the NaN of 0/0.
    """
    if pool.ndim != 2 or probes.ndim != 2 or pool.shape[1] != probes.shape[1]:
        raise InvalidInput(
            f"expected [N, d] and [M, d], got {tuple(pool.shape)}, {tuple(probes.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(pool.dtype, probes.dtype), torch.float32)
    return _unit_rows(pool.to(dtype)) @ _unit_rows(probes.to(dtype)).T


def _unit_rows(x: Tensor) -> Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)


def score_shard(
    pool_by_ckpt: Sequence[FeatureSet],
    probes_by_ckpt: Sequence[FeatureSet],
    mean_lrs: Sequence[float],
    *,
    method: Method,
    device: torch.device | str | None = None,
) -> ShardScores:
    """Inf(z_i, D_V) for the pool records of one shard (module docstring for the formulas).

    ``pool_by_ckpt[e]``, ``probes_by_ckpt[e]`` and ``mean_lrs[e]`` belong to checkpoint e.
    Provenance is checked: pool and probes at e agree on everything but ``kind``; every e has
    a distinct checkpoint and otherwise the same provenance; record ids (and probe subtasks)
    are the same at every e.

    ``device`` (e.g. "cuda") is where the [N, d] x [d, M] products run; results come back on
    the CPU. Features are compared in at least float32 whatever their storage dtype.
    """
    if method not in ("less", "tracin"):
        raise InvalidInput(f"method must be 'less' or 'tracin', got {method!r}")
    n_ckpt = len(pool_by_ckpt)
    if n_ckpt == 0 or len(probes_by_ckpt) != n_ckpt or len(mean_lrs) != n_ckpt:
        raise InvalidInput(
            f"need one pool set, probe set and mean LR per checkpoint; got {n_ckpt}, "
            f"{len(probes_by_ckpt)}, {len(mean_lrs)}"
        )
    _require_aligned(pool_by_ckpt, probes_by_ckpt)
    pool_ids = pool_by_ckpt[0].record_ids
    probe_subtasks = [s if s is not None else DEFAULT_SUBTASK for s in probes_by_ckpt[0].subtasks]
    if method == "less":
        weights = checkpoint_weights(mean_lrs)
    else:
        weights = torch.tensor([float(lr) for lr in mean_lrs], dtype=torch.float64)

    pair_scores: Tensor | None = None  # Inf(z_i, z_v) [N, M]
    for e in range(n_ckpt):
        pool = pool_by_ckpt[e].features.to(device) if device else pool_by_ckpt[e].features
        probes = probes_by_ckpt[e].features.to(pool.device)
        if method == "less":
            similarity = cosine_matrix(pool, probes)
        else:
            dtype = torch.promote_types(
                torch.promote_types(pool.dtype, probes.dtype), torch.float32
            )
            similarity = pool.to(dtype) @ probes.to(dtype).T
        term = weights[e].to(similarity.dtype).item() * similarity
        pair_scores = term if pair_scores is None else pair_scores + term
    if pair_scores is None:  # unreachable: n_ckpt >= 1 checked above
        raise InvalidInput("no checkpoints")

    scores, per_subtask = aggregate_subtasks(pair_scores, probe_subtasks)
    return ShardScores(record_ids=list(pool_ids), scores=scores, per_subtask=per_subtask)


def aggregate_subtasks(
    pair_scores: Tensor, probe_subtasks: Sequence[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Inf(z_i, D_V) [N] from Inf(z_i, z_v) [N, M]: the mean over each subtask's probes, the
    max over subtasks (§2.2); also the per-subtask means, all on the CPU."""
    if pair_scores.ndim != 2 or pair_scores.shape[1] != len(probe_subtasks):
        raise InvalidInput(
            f"pair scores {tuple(pair_scores.shape)} for {len(probe_subtasks)} probes"
        )
    per_subtask = {
        subtask: pair_scores[:, [v for v, s in enumerate(probe_subtasks) if s == subtask]].mean(1)
        for subtask in sorted(set(probe_subtasks))
    }
    scores = torch.stack(list(per_subtask.values()), dim=1).amax(dim=1)
    return scores.cpu(), {name: values.cpu() for name, values in per_subtask.items()}


def require_checkpoints_aligned(name: str, sets: Sequence[FeatureSet]) -> None:
    """One dataset's features at successive checkpoints: each set at its own adapter θ^e,
    otherwise the same provenance and the same record ids (TracIn's sum over checkpoints)."""
    first = sets[0]
    for e, this in enumerate(sets[1:], start=1):
        if this.provenance.checkpoint == first.provenance.checkpoint:
            raise ProvenanceMismatch(
                f"{name} features of checkpoints 0 and {e} have the same adapter "
                f"{first.provenance.checkpoint}: each term of the sum needs its own θ^e"
            )
        other_fields = {**this.provenance.to_dict(), "checkpoint": first.provenance.checkpoint}
        try:
            first.provenance.require_compatible(
                type(first.provenance).from_dict(other_fields), allow_kind_difference=False
            )
        except ProvenanceMismatch as exc:
            raise ProvenanceMismatch(f"{name} features, checkpoint 0 vs {e}: {exc}") from exc
        if this.record_ids != first.record_ids:
            raise ProvenanceMismatch(f"{name} record ids differ between checkpoints 0 and {e}")


def _require_aligned(
    pool_by_ckpt: Sequence[FeatureSet], probes_by_ckpt: Sequence[FeatureSet]
) -> None:
    if not probes_by_ckpt[0].record_ids:
        raise InvalidInput("no probe features to score against")
    for e, (pool, probes) in enumerate(zip(pool_by_ckpt, probes_by_ckpt, strict=True)):
        try:
            pool.provenance.require_compatible(probes.provenance, allow_kind_difference=True)
        except ProvenanceMismatch as exc:
            raise ProvenanceMismatch(f"checkpoint {e}, pool vs probes: {exc}") from exc
        if probes.subtasks != probes_by_ckpt[0].subtasks:
            raise ProvenanceMismatch(f"probe subtasks differ between checkpoints 0 and {e}")
    require_checkpoints_aligned("pool", pool_by_ckpt)
    require_checkpoints_aligned("probe", probes_by_ckpt)


def rank(record_ids: Sequence[str], scores: Sequence[float] | Tensor) -> list[int]:
    """Indices by score descending, ties by record id ascending: a deterministic order."""
    values = scores.tolist() if isinstance(scores, Tensor) else [float(s) for s in scores]
    if len(values) != len(record_ids):
        raise InvalidInput(f"{len(record_ids)} record ids but {len(values)} scores")
    if any(v != v for v in values):
        raise InvalidInput("scores contain NaN; cannot rank")
    if len(set(record_ids)) != len(record_ids):
        raise InvalidInput("record ids must be unique to rank deterministically")
    return sorted(range(len(values)), key=lambda i: (-values[i], record_ids[i]))


# --- the methods scored with this aggregation (``workers.engine.valuation_method``) -------------


def streamed(aggregation: Method) -> Callable[[ScoringInput], Iterator[ShardScores]]:
    """One pass: each pool shard against the probes at every checkpoint used."""

    def score(inputs: ScoringInput) -> Iterator[ShardScores]:
        for shard in inputs.pool():
            yield score_shard(
                shard, inputs.probes, inputs.mean_lrs, method=aggregation, device=inputs.device
            )

    return score


ONE_PASS_COST = (
    "featurize: one forward and backward pass per record and checkpoint, pool and probes; "
    "score: N·M·d multiply-adds per checkpoint, one pass over the stored pool"
)

LESS = ValuationMethod(
    name="less",
    title="LESS",
    pool_features="adam",
    probe_features="sgd",
    checkpoints="all",
    projection="flat",
    score=streamed("less"),
    formula=(
        "Inf(z, D_V) = max_j mean_{z_v ∈ D_V^(j)} Σ_e w_e cos(Π Γ_e(z), Π ∇ℓ(z_v; θ^e)), "
        "w_e = η̄_e / Σ_e' η̄_e'"
    ),
    reference="Xia et al. 2024, LESS (seed 002 §2, app. F)",
    cost=ONE_PASS_COST,
    good_for=(
        "targeted instruction tuning: the records whose Adam step moves the model most towards "
        "the probes' task; the cosine discounts gradient size (short responses' large "
        "gradients), LESS's reason for it"
    ),
)

TRACIN = ValuationMethod(
    name="tracin",
    title="TracIn",
    pool_features="sgd",
    probe_features="sgd",
    checkpoints="all",
    projection="flat",
    score=streamed("tracin"),
    formula=("Inf(z, D_V) = max_j mean_{z_v ∈ D_V^(j)} Σ_e η̄_e ⟨Π ∇ℓ(z; θ^e), Π ∇ℓ(z_v; θ^e)⟩"),
    reference="Pruthi et al. 2020, TracInCP (seed 002 §2.1)",
    cost=ONE_PASS_COST,
    good_for=(
        "TracIn as published, to compare with TracIn elsewhere: the first-order drop of the "
        "probes' loss from SGD steps on z over the warmup run"
    ),
)

TRACIN_ADAM = ValuationMethod(
    name="tracin_adam",
    title="TracIn with Adam pool features",
    pool_features="adam",
    probe_features="sgd",
    checkpoints="all",
    projection="flat",
    score=streamed("tracin"),
    formula=("Inf(z, D_V) = max_j mean_{z_v ∈ D_V^(j)} Σ_e η̄_e ⟨Π Γ_e(z), Π ∇ℓ(z_v; θ^e)⟩"),
    reference="seed 002 app. F (LESS's Adam influence before its cosine)",
    cost=ONE_PASS_COST,
    good_for=(
        "the first-order drop of the probes' loss from the Adam step on z; keeps the gradient "
        "size LESS's cosine discards (what `tracin` computed before migration 0012)"
    ),
)
