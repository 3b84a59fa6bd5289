"""Self-influence (``workers.engine.self_influence``) against TracIn's self-influence written out:
one example at a time, plain autograd, unprojected (``tests.engine.reference``), in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.features import FeatureSet, featurize, flat_moments
from workers.engine.lora import load_adapter_state, lora_parameters
from workers.engine.projection import BlockHadamardProjector, IdentityProjector, Projector
from workers.engine.self_influence import self_influence

from .conftest import Warmed, make_provenance
from .reference import reference_adam_feature, reference_gradient


def _features(warmed: Warmed, kind: str, ckpt: int, projector: Projector) -> FeatureSet:
    checkpoint = warmed.checkpoints[ckpt]
    return featurize(
        warmed.model,
        warmed.pool[:6],
        kind=kind,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        projector=projector,
        provenance=make_provenance(warmed.model, checkpoint, projector, kind=kind),
        batch_size=3,
        pad_token_id=0,
    )


def _reference(warmed: Warmed, kind: str) -> list[float]:
    """SI(z) = Σ_e η̄_e Σ_k φ_e(z)[k]², φ the example's own gradient (sgd) or Adam feature."""
    pool = warmed.pool[:6]
    out = [0.0] * len(pool)
    for ckpt in warmed.checkpoints:
        load_adapter_state(warmed.model, ckpt.adapter_state)
        warmed.model.eval()
        m, v = flat_moments(warmed.model, ckpt)
        for i, example in enumerate(pool):
            phi = reference_gradient(warmed.model, example).double()
            if kind == "adam":
                phi = reference_adam_feature(
                    phi, m.double(), v.double(), step=ckpt.step, bias_correction=False
                )
            out[i] += ckpt.mean_lr * sum(x * x for x in phi.tolist())
    return out


@pytest.mark.parametrize("kind", ["sgd", "adam"])  # self_influence, self_influence_adam
def test_self_influence_matches_the_sum_written_out(warmed: Warmed, kind: str) -> None:
    p = sum(q.numel() for _, q in lora_parameters(warmed.model))
    sets = [_features(warmed, kind, e, IdentityProjector(p)) for e in range(2)]
    got = self_influence(sets, [c.mean_lr for c in warmed.checkpoints])
    assert got.record_ids == [ex.record_id for ex in warmed.pool[:6]]
    assert got.per_subtask == {}  # no probes, no breakdown
    assert got.scores.dtype == torch.float64
    torch.testing.assert_close(
        got.scores, torch.tensor(_reference(warmed, kind), dtype=torch.float64), rtol=1e-4, atol=0
    )


def test_token_weighted_self_influence_is_tracin_of_the_summed_step(warmed: Warmed) -> None:
    """SI_T(z) = Σ_e η̄_e ⟨∇ℓ_sum(z), ∇ℓ(z)⟩: the training side as the token-mean warmup loss
    weighs z, written out with two autograd gradients per example (no token counting)."""
    p = sum(q.numel() for _, q in lora_parameters(warmed.model))
    sets = [_features(warmed, "sgd", e, IdentityProjector(p)) for e in range(2)]
    pool = warmed.pool[:6]
    want = [0.0] * len(pool)
    for ckpt in warmed.checkpoints:
        load_adapter_state(warmed.model, ckpt.adapter_state)
        warmed.model.eval()
        for i, example in enumerate(pool):
            summed = reference_gradient(warmed.model, example, summed=True).double()
            mean = reference_gradient(warmed.model, example).double()
            want[i] += ckpt.mean_lr * float(summed @ mean)
    lrs = [c.mean_lr for c in warmed.checkpoints]
    got = self_influence(sets, lrs, token_weighted=True)
    torch.testing.assert_close(
        got.scores, torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=0
    )
    plain = self_influence(sets, lrs).scores
    assert sets[0].target_tokens is not None and len(set(sets[0].target_tokens)) > 1
    assert got.scores.argsort().tolist() != plain.argsort().tolist()  # the weighting matters


def test_target_tokens_survive_storage_and_concatenation(warmed: Warmed) -> None:
    p = sum(q.numel() for _, q in lora_parameters(warmed.model))
    whole = _features(warmed, "sgd", 0, IdentityProjector(p))
    assert whole.target_tokens == [ex.n_response_tokens for ex in warmed.pool[:6]]
    stored = FeatureSet.from_safetensors(whole.to_safetensors())
    assert stored.target_tokens == whole.target_tokens
    halves = [
        FeatureSet(whole.provenance, whole.record_ids[a:b], whole.subtasks[a:b],
                   whole.features[a:b], whole.target_tokens[a:b])
        for a, b in ((0, 3), (3, 6))
    ]  # fmt: skip
    assert FeatureSet.concat(halves).target_tokens == whole.target_tokens
    uncounted = dataclasses.replace(halves[1], target_tokens=None)  # stored before they were
    assert FeatureSet.concat([halves[0], uncounted]).target_tokens is None
    old = dataclasses.replace(whole, target_tokens=None)
    assert FeatureSet.from_safetensors(old.to_safetensors()).target_tokens is None
    with pytest.raises(InvalidInput, match="response token counts"):
        self_influence([old], [1.0], token_weighted=True)
    assert self_influence([old], [1.0]).scores.shape == (6,)  # the plain sum needs none
    with pytest.raises(InvalidInput, match="target_tokens"):
        dataclasses.replace(whole, target_tokens=[0] * 6)


def test_projected_self_influence_estimates_the_exact_one(warmed: Warmed) -> None:
    """‖Πg‖² estimates ‖g‖² (E[ΠᵀΠ] = I): the block SRHT at d = 2048 is within a few %, and
    ranks the records the same way."""
    p = sum(q.numel() for _, q in lora_parameters(warmed.model))
    lrs = [c.mean_lr for c in warmed.checkpoints]
    exact = self_influence(
        [_features(warmed, "sgd", e, IdentityProjector(p)) for e in range(2)], lrs
    )
    srht = BlockHadamardProjector([q.numel() for _, q in lora_parameters(warmed.model)], 2048, 0)
    projected = self_influence([_features(warmed, "sgd", e, srht) for e in range(2)], lrs)
    ratio = projected.scores / exact.scores
    assert float((ratio - 1).abs().max()) < 0.15, ratio
    assert projected.scores.argsort().tolist() == exact.scores.argsort().tolist()


def test_self_influence_refuses_what_it_cannot_sum(warmed: Warmed) -> None:
    p = sum(q.numel() for _, q in lora_parameters(warmed.model))
    sgd = [_features(warmed, "sgd", e, IdentityProjector(p)) for e in range(2)]
    adam = [_features(warmed, "adam", e, IdentityProjector(p)) for e in range(2)]
    with pytest.raises(InvalidInput, match="one pool set and mean LR"):
        self_influence(sgd, [1.0])
    with pytest.raises(InvalidInput, match=">= 0"):
        self_influence(sgd, [1.0, -1.0])
    with pytest.raises(ProvenanceMismatch, match="same adapter"):
        self_influence([sgd[0], sgd[0]], [1.0, 1.0])
    with pytest.raises(ProvenanceMismatch, match="kind"):
        self_influence([sgd[0], adam[1]], [1.0, 1.0])
