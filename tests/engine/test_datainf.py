"""DataInf / NICE-IF: the Sherman–Morrison closed form vs explicit inverses; per-layer gradients
vs brute-force autograd."""

from __future__ import annotations

import pytest
import torch

from workers.engine.data import TokenizedExample
from workers.engine.datainf import (
    DataInfScorer,
    datainf_scores,
    layer_sizes,
    layerwise_projector,
)
from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.features import FeatureSet, featurize
from workers.engine.influence import aggregate_subtasks
from workers.engine.lora import lora_parameters
from workers.engine.projection import (
    BlockHadamardProjector,
    Projector,
    layer_input_sizes,
    layer_widths,
    split_layers,
)

from .conftest import Warmed, make_provenance
from .reference import reference_datainf, reference_gradient, reference_layer_gradients


def _reference_datainf(pool: list[torch.Tensor], probes: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l vᵀ [(1/n) Σ_i (g_i g_iᵀ + λ_l I)⁻¹] g_k with every inverse taken explicitly."""
    n, m = pool[0].shape[0], probes[0].shape[0]
    out = torch.zeros((n, m), dtype=torch.float64)
    for g, v in zip(pool, probes, strict=True):
        d = g.shape[1]
        lam = 0.1 * float((g * g).sum(dim=1).mean()) / d
        inverse = (
            sum(
                torch.linalg.inv(torch.outer(g[i], g[i]) + lam * torch.eye(d, dtype=torch.float64))
                for i in range(n)
            )
            / n
        )
        for k in range(n):
            for j in range(m):
                out[k, j] += v[j] @ inverse @ g[k]
    return out


def test_closed_form_equals_explicit_inverses() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    probes = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(
        datainf_scores(pool, probes), _reference_datainf(pool, probes), rtol=1e-10, atol=1e-12
    )


def test_a_layer_without_gradient_contributes_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = [torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.zeros(5, 3)]
    probes = [torch.randn(2, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3)]
    scores = datainf_scores(pool, probes)
    assert bool(torch.isfinite(scores).all())
    torch.testing.assert_close(scores, datainf_scores(pool[:1], probes[:1]))


def _layer_features(
    warmed: Warmed,
    examples: list[TokenizedExample],
    dim_per_layer: int | None,
    *,
    seed: int = 0,
    batch_size: int = 4,
) -> FeatureSet:
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    projector = layerwise_projector(model, dim_per_layer, seed)
    return featurize(
        model,
        examples,
        kind="sgd",
        checkpoint=ckpt,
        projector=projector,
        provenance=make_provenance(model, ckpt, projector, kind="sgd"),
        batch_size=batch_size,
        pad_token_id=0,
    )


def test_layerwise_features_are_the_exact_gradients_cut_by_layer(warmed: Warmed) -> None:
    model = warmed.model
    examples = warmed.pool[:5]
    exact = _layer_features(warmed, examples, None, batch_size=3)
    sizes = layer_sizes(model)
    assert sizes == [[p.numel()] for _, p in lora_parameters(model)]  # one per weight tensor
    layers = split_layers(exact.features, exact.provenance.projector)
    assert [x.shape[1] for x in layers] == [sum(g) for g in sizes]
    model.eval()
    for row, example in enumerate(examples):
        expected = reference_gradient(model, example).double()
        got = torch.cat([x[row] for x in layers]).double()
        assert float((got - expected).norm() / expected.norm()) < 1e-4

    projected = _layer_features(warmed, examples, 64, seed=2, batch_size=5)
    assert layer_widths(projected.provenance.projector) == [64] * len(sizes)
    assert layer_input_sizes(projected.provenance.projector) == [g[0] for g in sizes]
    torch.testing.assert_close(
        projected.features,
        layerwise_projector(model, 64, 2).project(exact.features),
        rtol=1e-4,
        atol=1e-6,
    )


def test_streamed_scorer_equals_the_whole_pool_formula(warmed: Warmed) -> None:
    pool = _layer_features(warmed, warmed.pool[:10], 32)
    probes = _layer_features(warmed, warmed.probes, 32)
    for relative, damping in ((True, 0.1), (False, 1e-4)):
        expected = datainf_scores(
            split_layers(pool.features, pool.provenance.projector),
            split_layers(probes.features, probes.provenance.projector),
            damping=damping,
            relative_damping=relative,
            layer_dims=layer_input_sizes(pool.provenance.projector),  # d_l = P_l, not 32
        )
        shards = [_rows(pool, slice(0, 4)), _rows(pool, slice(4, 7)), _rows(pool, slice(7, 10))]
        scorer = DataInfScorer(probes, damping=damping, relative_damping=relative)
        for shard in shards:
            scorer.add_norms(shard)
        for shard in shards:
            scorer.add_corrections(shard)
        got = [scorer.score(shard) for shard in shards]
        subtasks = [s or "default" for s in probes.subtasks]
        want, _ = aggregate_subtasks(expected, subtasks)
        torch.testing.assert_close(torch.cat([g.scores for g in got]), want.double())
        assert [r for g in got for r in g.record_ids] == pool.record_ids


def _streamed(probes: FeatureSet, shards: list[FeatureSet], **kwargs: float | bool) -> torch.Tensor:
    scorer = DataInfScorer(probes, **kwargs)  # type: ignore[arg-type]
    for shard in shards:
        scorer.add_norms(shard)
    for shard in shards:
        scorer.add_corrections(shard)
    return torch.cat([scorer.score(shard).scores for shard in shards])


def test_streamed_scorer_equals_datainf_as_published(warmed: Warmed) -> None:
    """Sift's batched exact features through the streamed scorer vs an independent DataInf:
    one example at a time by plain autograd, one layer per weight tensor, explicit inverses,
    λ_l = 0.1 · mean squared coordinate (``reference.reference_datainf``)."""
    model = warmed.model
    pool_ex, probe_ex = warmed.pool[:12], warmed.probes[:6]
    pool = _layer_features(warmed, pool_ex, None, batch_size=5)
    probes = _layer_features(warmed, probe_ex, None, batch_size=4)
    shards = [_rows(pool, slice(0, 5)), _rows(pool, slice(5, 12))]
    got = _streamed(probes, shards)

    model.eval()
    expected = reference_datainf(
        [reference_layer_gradients(model, ex) for ex in pool_ex],
        [reference_layer_gradients(model, ex) for ex in probe_ex],
    )
    subtasks = [ex.subtask or "default" for ex in probe_ex]
    want = torch.tensor(
        [
            max(
                float(expected[k, [j for j, s in enumerate(subtasks) if s == task]].mean())
                for task in set(subtasks)
            )
            for k in range(len(pool_ex))
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # a width no smaller than every tensor rotates each layer instead of compressing it
    widest = max(p.numel() for _, p in lora_parameters(model))
    rotated = [_layer_features(warmed, pool_ex, widest, batch_size=6)]
    rotated_probes = _layer_features(warmed, probe_ex, widest, batch_size=6)
    torch.testing.assert_close(
        _streamed(rotated_probes, rotated), got, rtol=1e-4, atol=1e-6 * float(got.abs().max())
    )


def _rows(features: FeatureSet, rows: slice) -> FeatureSet:
    return FeatureSet(
        features.provenance,
        features.record_ids[rows],
        features.subtasks[rows],
        features.features[rows],
    )


def test_scorer_refuses_out_of_order_passes_and_foreign_features(warmed: Warmed) -> None:
    pool = _layer_features(warmed, warmed.pool[:6], 32)
    probes = _layer_features(warmed, warmed.probes, 32)
    scorer = DataInfScorer(probes)
    scorer.add_norms(_rows(pool, slice(0, 3)))
    scorer.add_norms(_rows(pool, slice(3, 6)))
    scorer.add_corrections(_rows(pool, slice(0, 3)))
    with pytest.raises(InvalidInput, match="stream the whole pool"):
        scorer.score(pool)
    with pytest.raises(InvalidInput, match="norms are final"):
        scorer.add_norms(pool)
    other_seed = _layer_features(warmed, warmed.pool[:6], 32, seed=1)
    with pytest.raises(ProvenanceMismatch, match="seed"):
        scorer.add_corrections(other_seed)
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    flat = BlockHadamardProjector([p.numel() for _, p in lora_parameters(model)], 32, seed=0)
    flat_probes = FeatureSet(
        make_provenance(model, ckpt, flat, kind="sgd"),
        probes.record_ids,
        probes.subtasks,
        torch.zeros((len(probes.record_ids), 32)),
    )
    with pytest.raises(InvalidInput, match="layer by layer"):
        DataInfScorer(flat_probes)


def test_datainf_ranks_the_probes_task_on_the_tiny_model(warmed: Warmed) -> None:
    """Each planted probe's best-scored pool records share its task more often than chance."""
    pool = _layer_features(warmed, warmed.pool, None, batch_size=8)
    probes = _layer_features(warmed, warmed.probes, None, batch_size=8)
    scores = datainf_scores(
        split_layers(pool.features, pool.provenance.projector),
        split_layers(probes.features, probes.provenance.projector),
    )
    hits = 0
    for j, probe in enumerate(warmed.probes):
        best = scores[:, j].argsort(descending=True)[:4].tolist()
        hits += sum(probe.subtask in warmed.pool[i].record_id for i in best)
    n_tasks = len({p.subtask for p in warmed.probes})
    chance = 4 * len(warmed.probes) / n_tasks
    print(
        f"\nDataInf top-4 same-task hits: {hits} of {4 * len(warmed.probes)} (chance {chance:.1f})"
    )
    assert hits > 2 * chance


def test_nice_if_probe_side_equals_the_policy_gradient(warmed: Warmed) -> None:
    """NICE-IF's probe side: NICE's policy gradient through the layerwise projector is the
    flat policy gradient cut by layer (exact), or its layerwise projection (projected)."""
    import dataclasses

    from workers.engine.nice import ProbePrompt, assisted_samples, policy_gradient_features
    from workers.engine.projection import IdentityProjector

    model, ckpt = warmed.model, warmed.checkpoints[-1]
    probes = [
        ProbePrompt("a", ({"role": "user", "content": "Capital of Peru?"},)),
        ProbePrompt("b", ({"role": "user", "content": "Uppercase: river"},)),
    ]
    samples = assisted_samples(
        warmed.tokenizer, probes, {"a": ["Lima.", "No idea."], "b": ["RIVER", "river"]}
    )
    rewards = [1.0, 0.0, 1.0, 0.5]

    def policy(projector: Projector) -> torch.Tensor:
        provenance = dataclasses.replace(
            make_provenance(model, ckpt, projector, kind="sgd", max_length=128), kind="policy"
        )
        return policy_gradient_features(
            model,
            probes,
            samples,
            rewards,
            weighting="baseline",
            checkpoint=ckpt,
            projector=projector,
            provenance=provenance,
            batch_size=4,
            pad_token_id=0,
        ).features.features.double()

    p = sum(x.numel() for _, x in lora_parameters(model))
    flat = policy(IdentityProjector(p))
    torch.testing.assert_close(policy(layerwise_projector(model, None, 0)), flat)
    projected = layerwise_projector(model, 32, 3)
    torch.testing.assert_close(  # projection commutes with NICE's weighted sum over samples
        policy(projected),
        projected.project(flat.float()).double(),
        rtol=1e-4,
        atol=1e-6,
    )
