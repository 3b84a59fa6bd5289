"""Self-influence of pool examples: how much each example's own loss moves when it is trained on.

TracIn's self-influence (Pruthi et al. 2020, §3 and §5.4 "finding mislabelled examples"),
summed over the E warmup checkpoints like TracInCP:

    self_influence      : SI(z) = Σ_e η̄_e <φ_e(z), φ_e(z)> = Σ_e η̄_e ‖φ_e(z)‖²

with η̄_e the checkpoint's mean learning rate (the c_e of ``influence.score_shard``'s tracin)
and φ_e(z) the pool feature of z at θ^e: its plain SGD loss gradient ∇ℓ(z; θ^e) (method
``self_influence``: TracIn(z, z) as published), or LESS's Adam feature Γ_e(z) = m'/sqrt(v'+ε)
(method ``self_influence_adam``: the same sum with both sides of TracIn's inner product
Adam-preconditioned, as ``tracin_adam`` preconditions the pool side; Pruthi et al. app. A
TracIn for Adam weighs the update direction the same way). ``⟨∇ℓ, Γ⟩``, the first-order change
of z's loss under its own Adam step, would need both feature kinds of every record; ‖Γ‖²
needs only the Adam features a ``less`` or ``tracin_adam`` valuation already stored.

Features are projected (φ ↦ Πφ, Π with E[ΠᵀΠ] = I: block SRHT or Rademacher), so ‖Πφ‖²
estimates ‖φ‖² (Johnson–Lindenstrauss: relative error O(1/√d)). No probes: there is no
per-subtask breakdown. A high score flags a record the model fits poorly and that pulls the
parameters hard (mislabelled, off-distribution, duplicated-with-conflicting-answer); rank
descending to inspect the most suspicious first. Shapes: N pool records, d features.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from workers.engine.errors import InvalidInput
from workers.engine.features import FeatureSet
from workers.engine.influence import ShardScores, require_checkpoints_aligned
from workers.engine.valuation_method import ScoringInput, ValuationMethod


def self_influence(
    pool_by_ckpt: Sequence[FeatureSet],
    mean_lrs: Sequence[float],
    *,
    device: torch.device | str | None = None,
) -> ShardScores:
    """SI(z_i) [N] for the pool records of one shard (module docstring), float64 on the CPU.

    ``pool_by_ckpt[e]`` and ``mean_lrs[e]`` belong to checkpoint e. The sets must agree on
    record ids and on every provenance field but the checkpoint, which must differ between
    checkpoints (each term needs its own θ^e). ``per_subtask`` is empty: there are no probes.
    """
    n_ckpt = len(pool_by_ckpt)
    if n_ckpt == 0 or len(mean_lrs) != n_ckpt:
        raise InvalidInput(
            f"need one pool set and mean LR per checkpoint; got {n_ckpt}, {len(mean_lrs)}"
        )
    lrs = [float(lr) for lr in mean_lrs]
    if any(not torch.isfinite(torch.tensor(lr)) or lr < 0 for lr in lrs):
        raise InvalidInput(f"mean learning rates must be finite and >= 0: {lrs}")
    require_checkpoints_aligned("pool", pool_by_ckpt)
    first = pool_by_ckpt[0]
    scores = torch.zeros(len(first.record_ids), dtype=torch.float64)
    for feature_set, lr in zip(pool_by_ckpt, lrs, strict=True):
        phi = feature_set.features.to(device) if device else feature_set.features
        squared_norms = phi.to(torch.float64).pow(2).sum(dim=1)  # ‖φ_e(z_i)‖² [N]
        scores += lr * squared_norms.cpu()
    return ShardScores(record_ids=list(first.record_ids), scores=scores, per_subtask={})


# --- the methods (``workers.engine.valuation_method``) --------------------------------------------


def streamed_scores(inputs: ScoringInput) -> Iterator[ShardScores]:
    """One pass: each pool shard's own features at every checkpoint; no probes."""
    for shard in inputs.pool():
        yield self_influence(shard, inputs.mean_lrs, device=inputs.device)


_COST = (
    "featurize: one forward and backward pass per pool record and checkpoint, none if a "
    "valuation of the same pool and settings stored them; score: N·d per checkpoint, one pass"
)

SELF_INFLUENCE = ValuationMethod(
    name="self_influence",
    title="Self-influence",
    pool_features="sgd",
    probe_features=None,
    checkpoints="all",
    projection="flat",
    score=streamed_scores,
    formula="SI(z) = Σ_e η̄_e ‖Π ∇ℓ(z; θ^e)‖²",
    reference="Pruthi et al. 2020, TracIn self-influence (§3, §5.4)",
    cost=_COST + " (reuses a `tracin` valuation's pool features)",
    good_for=(
        "no probes: records the model fits badly and that pull the parameters hard "
        "(mislabelled, off-distribution, conflicting duplicates), most suspicious first"
    ),
)

SELF_INFLUENCE_ADAM = ValuationMethod(
    name="self_influence_adam",
    title="Self-influence with Adam features",
    pool_features="adam",
    probe_features=None,
    checkpoints="all",
    projection="flat",
    score=streamed_scores,
    formula="SI(z) = Σ_e η̄_e ‖Π Γ_e(z)‖²",
    reference="Pruthi et al. 2020 §3 and app. A (TracIn for Adam), on LESS's Adam features",
    cost=_COST + " (reuses a `less` or `tracin_adam` valuation's pool features)",
    good_for="as `self_influence`, weighing each coordinate as the Adam warmup run moved it",
)
