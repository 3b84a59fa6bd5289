"""LESS / TracIn (as published, and on Adam features) scores vs explicit loops, provenance
checks, and projection fidelity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy.stats import spearmanr

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.features import FeatureSet, featurize, flat_moments
from workers.engine.influence import (
    checkpoint_weights,
    cosine_matrix,
    rank,
    score_shard,
)
from workers.engine.lora import load_adapter_state, lora_parameters
from workers.engine.projection import IdentityProjector, Projector, RademacherProjector

from .conftest import Warmed, make_provenance
from .reference import reference_adam_feature, reference_gradient, reference_scores


def _features(
    warmed: Warmed, examples: list, kind: str, ckpt: int, projector: Projector
) -> FeatureSet:
    checkpoint = warmed.checkpoints[ckpt]
    return featurize(
        warmed.model,
        examples,
        kind=kind,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        projector=projector,
        provenance=make_provenance(warmed.model, checkpoint, projector, kind=kind),
        batch_size=3,
        pad_token_id=0,
    )


def _two_subtask_probes(warmed: Warmed) -> list:
    return [
        dataclasses.replace(ex, subtask="a" if i < 3 else "b")
        for i, ex in enumerate(warmed.probes[:5])
    ]


@pytest.mark.parametrize(
    ("method", "pool_kind", "aggregation"),
    [  # valuation method, its pool features, score_shard's aggregation (valuation glue)
        ("less", "adam", "less"),
        ("tracin", "sgd", "tracin"),  # TracIn as published: plain gradients on both sides
        ("tracin_adam", "adam", "tracin"),
    ],
)
def test_scores_match_explicit_loops(
    warmed: Warmed, method: str, pool_kind: str, aggregation: str
) -> None:
    pool, probes = warmed.pool[:6], _two_subtask_probes(warmed)
    projector = IdentityProjector(sum(p.numel() for _, p in lora_parameters(warmed.model)))
    pool_sets = [_features(warmed, pool, pool_kind, e, projector) for e in range(2)]
    probe_sets = [_features(warmed, probes, "sgd", e, projector) for e in range(2)]
    mean_lrs = [c.mean_lr for c in warmed.checkpoints]
    got = score_shard(pool_sets, probe_sets, mean_lrs, method=aggregation)  # type: ignore[arg-type]

    ref_pool, ref_probes = [], []
    for ckpt in warmed.checkpoints:
        load_adapter_state(warmed.model, ckpt.adapter_state)
        warmed.model.eval()
        m, v = flat_moments(warmed.model, ckpt)
        grads = [reference_gradient(warmed.model, ex).double() for ex in pool]
        ref_pool.append(
            torch.stack(
                grads
                if method == "tracin"
                else [
                    reference_adam_feature(
                        g, m.double(), v.double(), step=ckpt.step, bias_correction=False
                    )
                    for g in grads
                ]
            )
        )
        ref_probes.append(torch.stack([reference_gradient(warmed.model, ex) for ex in probes]))
    expected = reference_scores(
        ref_pool, ref_probes, [ex.subtask for ex in probes], mean_lrs, method=aggregation
    )
    assert got.record_ids == [ex.record_id for ex in pool]
    assert set(got.per_subtask) == {"a", "b"}
    torch.testing.assert_close(
        got.scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6
    )


def test_score_shard_rejects_mismatched_provenance(warmed: Warmed) -> None:
    p = sum(p.numel() for _, p in lora_parameters(warmed.model))
    pool, probes = warmed.pool[:3], warmed.probes[:2]
    proj0, proj1 = RademacherProjector(p, 32, seed=0), RademacherProjector(p, 32, seed=1)
    pool_sets = [_features(warmed, pool, "adam", e, proj0) for e in range(2)]
    probe_sets = [_features(warmed, probes, "sgd", e, proj0) for e in range(2)]
    lrs = [1.0, 1.0]
    score_shard(pool_sets, probe_sets, lrs, method="less")  # compatible: no error

    other_seed = [_features(warmed, probes, "sgd", e, proj1) for e in range(2)]
    with pytest.raises(ProvenanceMismatch, match="seed"):
        score_shard(pool_sets, other_seed, lrs, method="less")
    swapped = [probe_sets[1], probe_sets[0]]  # probes of the other checkpoint
    with pytest.raises(ProvenanceMismatch, match="checkpoint"):
        score_shard(pool_sets, swapped, lrs, method="less")
    with pytest.raises(ProvenanceMismatch, match="same adapter"):
        score_shard([pool_sets[0]] * 2, [probe_sets[0]] * 2, lrs, method="less")
    reordered = dataclasses.replace(pool_sets[1], record_ids=pool_sets[1].record_ids[::-1])
    with pytest.raises(ProvenanceMismatch, match="record ids"):
        score_shard([pool_sets[0], reordered], probe_sets, lrs, method="less")
    with pytest.raises(InvalidInput):
        score_shard(pool_sets, probe_sets, [1.0], method="less")


def test_cosine_matrix_zero_vectors_score_zero() -> None:
    pool = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    probes = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.6, 0.0]])
    torch.testing.assert_close(cosine_matrix(pool, probes), expected)


def test_checkpoint_weights_are_normalised_mean_lrs() -> None:
    w = checkpoint_weights([2e-5, 1e-5, 1e-5])
    torch.testing.assert_close(w, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    for bad in ([], [0.0, 0.0], [-1.0, 2.0], [float("nan")]):
        with pytest.raises(InvalidInput):
            checkpoint_weights(bad)


def test_rank_breaks_ties_by_record_id() -> None:
    ids = ["c", "a", "d", "b"]
    assert rank(ids, [1.0, 2.0, 1.0, 1.0]) == [1, 3, 0, 2]
    assert rank(ids, torch.tensor([0.0, 0.0, 0.0, 0.0])) == [1, 3, 0, 2]
    with pytest.raises(InvalidInput):
        rank(ids, [1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(InvalidInput):
        rank(["a", "a"], [1.0, 2.0])


def test_projected_cosines_rank_like_exact_cosines(warmed: Warmed) -> None:
    """JL check on real features: Spearman of projected (d=2048) vs exact cosines."""
    p = sum(p.numel() for _, p in lora_parameters(warmed.model))
    pool, probes = warmed.pool[:20], warmed.probes
    exact = cosine_matrix(
        _features(warmed, pool, "adam", 1, IdentityProjector(p)).features,
        _features(warmed, probes, "sgd", 1, IdentityProjector(p)).features,
    )
    projector = RademacherProjector(p, 2048, seed=0)
    projected = cosine_matrix(
        _features(warmed, pool, "adam", 1, projector).features,
        _features(warmed, probes, "sgd", 1, projector).features,
    )
    rho = spearmanr(exact.flatten().numpy(), projected.flatten().numpy()).statistic
    print(f"\nSpearman(projected d=2048, exact) over {exact.numel()} pairs, P={p}: {rho:.4f}")
    assert rho > 0.9
