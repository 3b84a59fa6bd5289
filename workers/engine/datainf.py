"""DataInf influence (seed 002 app. E.3; Kwon et al. 2024) and NICE-IF.

Influence functions weight gradients by an inverse Hessian; DataInf makes that affordable for
LoRA by working layer by layer (each LoRA weight tensor, lora_A or lora_B of an adapted module,
is one layer l, as in DataInf's code) with the damped empirical Fisher
H_l = (1/n) Σ_i g_il g_ilᵀ + λ_l I and the swap

    (1/n Σ_i g_il g_ilᵀ + λ_l I)⁻¹  ≈  (1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹
                                    =  1/(n λ_l) Σ_i (I - g_il g_ilᵀ / (λ_l + ‖g_il‖²))

(Sherman–Morrison per term), so no matrix is ever inverted. The score of pool example k for
probe v is the helpfulness -I(z_k) = Σ_l v_lᵀ H_l⁻¹ g_kl (higher = upweighting z_k lowers the
probe's loss more; the sign LESS uses), i.e.

    Σ_l 1/(n λ_l) [ n v_lᵀ g_kl - C_l g_kl ],   C_l = Σ_i (v_lᵀ g_il) g_ilᵀ / (λ_l + ‖g_il‖²).

λ_l = ``damping`` · (n d_l)⁻¹ Σ_i ‖g_il‖², the mean squared gradient coordinate of the layer
(DataInf's code, damping 0.1: a tenth of the mean eigenvalue tr(G_l)/d_l of the layer's
uncentred Fisher G_l = (1/n) Σ_i g_il g_ilᵀ), or, with ``relative_damping=False``,
λ_l = ``damping`` (seed 002 E.3 uses 1e-4 on 2048-d projections). d_l is the layer's
parameter count P_l, also when its gradients are projected to w_l < P_l columns: the
projection keeps ‖g_il‖² and v_lᵀ g_il (JL), so the same λ_l makes the projected score
estimate the exact one; dividing by w_l instead would scale λ_l by P_l / w_l (36x for a
73,728-parameter tensor at 2048 columns), shrink the Hessian term toward a rescaled TracIn,
and rank further from exact DataInf at every width measured (docs/benchmarks.md). (Sift
formerly used λ_l = damping · mean_i ‖g_il‖² over whole modules, d_l times larger: it ranked
like Σ_l v_lᵀ g_l / λ_l, a per-layer-scaled TracIn, Spearman 0.996-0.998, and was dropped.)

Gradients g (pool, loss) and v (probes: loss for DataInf, NICE's policy gradient for NICE-IF)
are taken at one checkpoint (the last) and projected layer by layer
(``projection.LayerwiseProjector``): the ordinary featurizers produce them, the projector's
spec tells the scorer where each layer's columns are. The Σ_i couples every pool example with
every other, so a stored pool is streamed three times (``DataInfScorer``): ‖g_il‖² for λ_l,
then C_l, then the scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from peft import PeftModel
from torch import Tensor

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.features import FeatureSet
from workers.engine.influence import DEFAULT_SUBTASK, ShardScores, aggregate_subtasks
from workers.engine.lora import lora_parameters
from workers.engine.projection import LayerwiseProjector, layer_input_sizes, split_layers
from workers.engine.valuation_method import ScoringInput, ValuationMethod


def layer_sizes(model: PeftModel) -> list[list[int]]:
    """DataInf's layers as ``LayerwiseProjector`` groups: one per ``lora_parameters`` tensor
    (each module's lora_A and lora_B apart, as DataInf's code treats every weight tensor)."""
    return [[param.numel()] for _, param in lora_parameters(model)]


def layerwise_projector(
    model: PeftModel, dim_per_layer: int | None, seed: int
) -> LayerwiseProjector:
    """The per-layer Π DataInf features use for this model (``None``: exact gradients)."""
    return LayerwiseProjector(layer_sizes(model), dim_per_layer, seed)


def datainf_scores(
    pool_layers: Sequence[Tensor],
    probe_layers: Sequence[Tensor],
    *,
    damping: float = 0.1,
    relative_damping: bool = True,
    layer_dims: Sequence[int] | None = None,
) -> Tensor:
    """Helpfulness [N, M] of each pool example for each probe, the whole pool at once (module
    docstring): the reference the streaming ``DataInfScorer`` is tested against.
    ``layer_dims``: d_l per layer (default: the layers' widths, i.e. unprojected features)."""
    scorer = _LayerScorer(
        probe_layers, damping=damping, relative_damping=relative_damping, layer_dims=layer_dims
    )
    scorer.add_norms(pool_layers)
    scorer.add_corrections(pool_layers)
    return scorer.scores(pool_layers)


class _LayerScorer:
    """The three streamed passes on per-layer tensors (no provenance)."""

    def __init__(
        self,
        probe_layers: Sequence[Tensor],
        *,
        damping: float,
        relative_damping: bool,
        layer_dims: Sequence[int] | None = None,
    ) -> None:
        if not probe_layers:
            raise InvalidInput("need a non-empty list of layers")
        if not damping > 0:
            raise InvalidInput(f"damping must be > 0, got {damping}")
        self.probes = [v.double() for v in probe_layers]
        self.m = self.probes[0].shape[0]
        if self.m == 0 or any(v.shape[0] != self.m for v in self.probes):
            raise InvalidInput("need at least one probe, with a row in every layer")
        self.damping, self.relative = damping, relative_damping
        dims = [v.shape[1] for v in self.probes] if layer_dims is None else list(layer_dims)
        if len(dims) != len(self.probes) or min(dims) < 1:
            raise InvalidInput(f"need one d_l >= 1 for each of {len(self.probes)} layers: {dims}")
        self.dims = torch.tensor(dims, dtype=torch.float64)  # d_l [L]
        self.n = 0
        self.sq_sums = torch.zeros(len(self.probes), dtype=torch.float64)
        self.lambdas: Tensor | None = None
        self.corrections = [torch.zeros_like(v) for v in self.probes]  # C_l [M, d_l]
        self.corrected = 0

    def _check(self, pool_layers: Sequence[Tensor]) -> list[Tensor]:
        if len(pool_layers) != len(self.probes):
            raise InvalidInput(f"pool has {len(pool_layers)} layers, probes {len(self.probes)}")
        n = pool_layers[0].shape[0]
        for g, v in zip(pool_layers, self.probes, strict=True):
            if g.ndim != 2 or g.shape[0] != n or g.shape[1] != v.shape[1]:
                raise InvalidInput(
                    f"layer shapes differ: pool {tuple(g.shape)}, probes {tuple(v.shape)}"
                )
        return [g.double() for g in pool_layers]

    def add_norms(self, pool_layers: Sequence[Tensor]) -> None:
        """Pass 1: accumulate Σ_i ‖g_il‖² and n."""
        if self.lambdas is not None:
            raise InvalidInput("norms are final once corrections have started")
        layers = self._check(pool_layers)
        self.n += layers[0].shape[0]
        for layer, g in enumerate(layers):
            self.sq_sums[layer] += (g * g).sum()

    def _finish_norms(self) -> Tensor:
        if self.lambdas is None:
            if self.n == 0:
                raise InvalidInput("need at least one pool example")
            if self.relative:
                self.lambdas = self.damping * self.sq_sums / (self.n * self.dims)
            else:
                self.lambdas = torch.full_like(self.sq_sums, self.damping)
        return self.lambdas

    def add_corrections(self, pool_layers: Sequence[Tensor]) -> None:
        """Pass 2: accumulate C_l = Σ_i (v_lᵀ g_il) g_ilᵀ / (λ_l + ‖g_il‖²)."""
        lambdas = self._finish_norms()
        layers = self._check(pool_layers)
        self.corrected += layers[0].shape[0]
        for layer, g in enumerate(layers):
            lam = float(lambdas[layer])
            if lam == 0:
                continue  # a layer with no gradient anywhere contributes nothing
            sq = (g * g).sum(dim=1)
            vg = self.probes[layer] @ g.T  # [M, n]
            self.corrections[layer] += (vg / (lam + sq)[None, :]) @ g

    def scores(self, pool_layers: Sequence[Tensor]) -> Tensor:
        """Pass 3: helpfulness [n_shard, M] of these pool rows."""
        lambdas = self._finish_norms()
        if self.corrected != self.n:
            raise InvalidInput(
                f"corrections cover {self.corrected} pool examples, norms {self.n}: "
                "stream the whole pool through both passes first"
            )
        layers = self._check(pool_layers)
        total = torch.zeros((layers[0].shape[0], self.m), dtype=torch.float64)
        for layer, g in enumerate(layers):
            lam = float(lambdas[layer])
            if lam == 0:
                continue
            v, c = self.probes[layer], self.corrections[layer]
            total += ((self.n * (v @ g.T) - c @ g.T) / (self.n * lam)).T
        return total


class DataInfScorer:
    """DataInf / NICE-IF scores of a stored pool, streamed shard by shard in three passes.

    Call ``add_norms`` on every pool shard, then ``add_corrections`` on every shard, then
    ``score`` on each shard. Every shard must have the probes' provenance (but its kind) and
    a layerwise projector; probes are aggregated like LESS (mean within a subtask, max over
    subtasks). d_l for λ_l is each layer's parameter count, read from the projector spec
    (module docstring).
    """

    def __init__(
        self, probes: FeatureSet, *, damping: float = 0.1, relative_damping: bool = True
    ) -> None:
        if not probes.record_ids:
            raise InvalidInput("no probe features to score against")
        self.provenance = probes.provenance
        self.probe_subtasks = [s if s is not None else DEFAULT_SUBTASK for s in probes.subtasks]
        self._layers = _LayerScorer(
            self._split(probes),
            damping=damping,
            relative_damping=relative_damping,
            layer_dims=layer_input_sizes(probes.provenance.projector),
        )

    def _split(self, features: FeatureSet) -> list[Tensor]:
        return split_layers(features.features, features.provenance.projector)

    def _pool_layers(self, pool: FeatureSet) -> list[Tensor]:
        try:
            pool.provenance.require_compatible(self.provenance, allow_kind_difference=True)
        except ProvenanceMismatch as exc:
            raise ProvenanceMismatch(f"pool vs probes: {exc}") from exc
        return self._split(pool)

    def add_norms(self, pool: FeatureSet) -> None:
        self._layers.add_norms(self._pool_layers(pool))

    def add_corrections(self, pool: FeatureSet) -> None:
        self._layers.add_corrections(self._pool_layers(pool))

    @property
    def lambdas(self) -> list[float]:
        """λ_l per layer (after the first pass)."""
        return self._layers._finish_norms().tolist()

    def score(self, pool: FeatureSet) -> ShardScores:
        pairs = self._layers.scores(self._pool_layers(pool))
        scores, per_subtask = aggregate_subtasks(pairs, self.probe_subtasks)
        return ShardScores(list(pool.record_ids), scores, per_subtask)


# --- the methods (``workers.engine.valuation_method``) --------------------------------------------


def streamed_scores(inputs: ScoringInput) -> Iterator[ShardScores]:
    """Three passes over the stored pool at the last checkpoint: λ_l, then C_l, then scores."""
    spec = inputs.settings["datainf"]
    scorer = DataInfScorer(
        inputs.probes[-1], damping=spec["damping"], relative_damping=spec["relative_damping"]
    )
    for shard in inputs.pool():
        scorer.add_norms(shard[-1])
    lambdas = scorer.lambdas
    inputs.note(
        f"DataInf damping λ over {len(lambdas)} layers: min {min(lambdas):.3g}, "
        f"max {max(lambdas):.3g}"
    )
    for shard in inputs.pool():
        scorer.add_corrections(shard[-1])
    for shard in inputs.pool():
        yield scorer.score(shard[-1])


_COST = (
    "featurize: one forward and backward pass per record at the last checkpoint only, pool and "
    "probes; score: three passes over the stored pool (λ, the correction C, the scores), "
    "O(N·M·w) per pass for w stored columns"
)

DATAINF = ValuationMethod(
    name="datainf",
    title="DataInf",
    pool_features="sgd",
    probe_features="sgd",
    checkpoints="last",
    projection="layerwise",
    score=streamed_scores,
    pool_passes=3,
    formula=(
        "Inf(z_k, D_V) = max_j mean_{z_v ∈ D_V^(j)} Σ_l 1/(n λ_l) [n v_lᵀ g_kl - C_l g_kl], "
        "C_l = Σ_i (v_lᵀ g_il) g_ilᵀ / (λ_l + ‖g_il‖²), "
        "λ_l = damping · Σ_i ‖g_il‖² / (n P_l) (damping 0.1); "
        "g_il = Π_l ∇_l ℓ(z_i; θ^E), v_l = Π_l ∇_l ℓ(z_v; θ^E), l over LoRA weight tensors"
    ),
    reference="Kwon et al. 2024, DataInf (seed 002 §2.1, app. E.3)",
    cost=_COST,
    good_for=(
        "an influence function (inverse-Hessian-weighted) at the trained adapter: discounts "
        "directions every record pushes, which TracIn's inner product counts"
    ),
    settings=("datainf",),
)

NICE_IF = ValuationMethod(
    name="nice_if",
    title="NICE-IF",
    pool_features="sgd",
    probe_features="policy",
    checkpoints="last",
    projection="layerwise",
    score=streamed_scores,
    pool_passes=3,
    formula=(
        "DataInf's score with v_l = Π_l ψ_l(x_v; θ^E), NICE's policy gradient of the reward "
        "in place of the probe's loss gradient"
    ),
    reference="Wang et al., NICE (seed 002 §3.2, app. E.3)",
    cost=_COST + "; probes: NICE's sampling and rewards at the last checkpoint",
    good_for="DataInf's influence on a reward without a gradient (as NICE is to LESS)",
    settings=("nice", "datainf"),
)
