from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy.stats import spearmanr

from service.db.models import FEATURE_KINDS as STORED_KINDS
from workers.engine import features as features_module
from workers.engine.errors import Cancelled, InvalidInput, ProvenanceMismatch
from workers.engine.features import FEATURE_KINDS, FeatureSet, Provenance, featurize
from workers.engine.gradients import AdamFeatureMap, adam_features
from workers.engine.influence import cosine_matrix
from workers.engine.lora import lora_parameters
from workers.engine.projection import (
    BlockHadamardProjector,
    IdentityProjector,
    Projector,
    RademacherProjector,
)

from .conftest import Warmed, make_provenance


def _featurize(
    warmed: Warmed,
    projector: Projector,
    *,
    ckpt: int = 0,
    kind: str = "adam",
    dtype: str = "float32",
    batch_size: int = 4,
) -> FeatureSet:
    checkpoint = warmed.checkpoints[ckpt]
    return featurize(
        warmed.model,
        warmed.pool[:6],
        kind=kind,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        projector=projector,
        provenance=make_provenance(warmed.model, checkpoint, projector, kind=kind, dtype=dtype),
        batch_size=batch_size,
        pad_token_id=0,
    )


def _n_params(warmed: Warmed) -> int:
    return sum(p.numel() for _, p in lora_parameters(warmed.model))


def test_same_seed_gives_identical_features_and_other_seed_differs(warmed: Warmed) -> None:
    p = _n_params(warmed)
    first = _featurize(warmed, RademacherProjector(p, 256, seed=0))
    second = _featurize(warmed, RademacherProjector(p, 256, seed=0))
    other = _featurize(warmed, RademacherProjector(p, 256, seed=1))
    assert first.features.shape == (6, 256)
    assert torch.equal(first.features, second.features)
    assert not torch.allclose(first.features, other.features)
    assert first.record_ids == [ex.record_id for ex in warmed.pool[:6]]


def test_safetensors_round_trip_and_float16_storage(warmed: Warmed) -> None:
    p = _n_params(warmed)
    features = _featurize(warmed, RademacherProjector(p, 64, seed=0), dtype="float16")
    assert features.features.dtype == torch.float16
    features.subtasks[0] = "math"
    restored = FeatureSet.from_safetensors(features.to_safetensors())
    assert restored.provenance == features.provenance
    assert restored.record_ids == features.record_ids and restored.subtasks == features.subtasks
    assert torch.equal(restored.features, features.features)


def test_concat_requires_identical_provenance(warmed: Warmed) -> None:
    p = _n_params(warmed)
    base = _featurize(warmed, RademacherProjector(p, 64, seed=0))
    both = FeatureSet.concat([base, base])
    assert both.features.shape == (12, 64)
    for other in (
        _featurize(warmed, RademacherProjector(p, 64, seed=1)),  # seed
        _featurize(warmed, RademacherProjector(p, 32, seed=0)),  # dim
        _featurize(warmed, RademacherProjector(p, 64, seed=0), ckpt=1),  # checkpoint
        _featurize(warmed, RademacherProjector(p, 64, seed=0), kind="sgd"),  # kind
    ):
        with pytest.raises(ProvenanceMismatch):
            FeatureSet.concat([base, other])


def test_mismatch_message_names_every_differing_field(warmed: Warmed) -> None:
    p = _n_params(warmed)
    a = _featurize(warmed, RademacherProjector(p, 64, seed=0)).provenance
    b = dataclasses.replace(a, seed=9, dim=7, kind="sgd")
    with pytest.raises(ProvenanceMismatch) as info:
        a.require_compatible(b, allow_kind_difference=False)
    assert all(name in str(info.value) for name in ("seed", "dim", "kind"))
    with pytest.raises(ProvenanceMismatch) as info:
        a.require_compatible(b, allow_kind_difference=True)
    assert "kind" not in str(info.value)


def test_featurize_refuses_a_provenance_that_does_not_describe_it(warmed: Warmed) -> None:
    p = _n_params(warmed)
    projector = RademacherProjector(p, 64, seed=0)
    wrong = make_provenance(warmed.model, warmed.checkpoints[1], projector, kind="adam")
    with pytest.raises(ProvenanceMismatch, match="checkpoint"):
        featurize(
            warmed.model,
            warmed.pool[:2],
            kind="adam",
            checkpoint=warmed.checkpoints[0],
            projector=projector,
            provenance=wrong,
            batch_size=2,
            pad_token_id=0,
        )


def test_progress_and_cancellation(warmed: Warmed) -> None:
    p = _n_params(warmed)
    projector = RademacherProjector(p, 16, seed=0)
    ckpt = warmed.checkpoints[0]
    provenance = make_provenance(warmed.model, ckpt, projector, kind="sgd")
    seen: list[int] = []
    featurize(
        warmed.model,
        warmed.pool[:5],
        kind="sgd",
        checkpoint=ckpt,
        projector=projector,
        provenance=provenance,
        batch_size=2,
        pad_token_id=0,
        on_progress=seen.append,
    )
    assert seen == [2, 4, 5]
    with pytest.raises(Cancelled):
        featurize(
            warmed.model,
            warmed.pool[:5],
            kind="sgd",
            checkpoint=ckpt,
            projector=projector,
            provenance=provenance,
            batch_size=2,
            pad_token_id=0,
            should_stop=lambda: len(seen) > 3,
            on_progress=seen.append,
        )


# --- the batched (hooked, streamed) path against the loop reference -------------------------


def _segments(warmed: Warmed) -> list[int]:
    return [p.numel() for _, p in lora_parameters(warmed.model)]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_batched_featurize_equals_loop_reference(
    warmed: Warmed, kind: str, bias_correction: bool
) -> None:
    """Exact features (Π = I) and SRHT-projected ones: batched == per-example loop to 1e-4."""
    p = _n_params(warmed)
    for projector in (
        IdentityProjector(p),
        BlockHadamardProjector(_segments(warmed), 8192, seed=0),
    ):
        ckpt = warmed.checkpoints[1]
        common = dict(
            kind=kind,
            checkpoint=ckpt,
            projector=projector,
            provenance=make_provenance(warmed.model, ckpt, projector, kind=kind),
            batch_size=5,
            pad_token_id=0,
            adam_bias_correction=bias_correction,
        )
        batched = featurize(warmed.model, warmed.pool[:7], method="batched", **common)
        loop = featurize(warmed.model, warmed.pool[:7], method="loop", **common)
        rel = (batched.features - loop.features).norm(dim=1) / loop.features.norm(dim=1)
        assert float(rel.max()) < 1e-4, (type(projector).__name__, float(rel.max()))


def test_out_of_memory_halves_the_batch_and_keeps_the_result(warmed: Warmed, monkeypatch) -> None:
    """A batch over 2 examples 'runs out of memory': featurize retries smaller, same features."""
    projector = BlockHadamardProjector(_segments(warmed), 64, seed=0)
    ckpt = warmed.checkpoints[0]
    kwargs = dict(
        kind="adam",
        checkpoint=ckpt,
        projector=projector,
        provenance=make_provenance(warmed.model, ckpt, projector, kind="adam"),
        pad_token_id=0,
    )
    expected = featurize(warmed.model, warmed.pool[:5], batch_size=2, **kwargs)
    real = features_module.backward_with_per_example_gradients

    def small_memory(model, batch, consume, token_loss):  # type: ignore[no-untyped-def]
        if batch["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, consume, token_loss)

    monkeypatch.setattr(features_module, "backward_with_per_example_gradients", small_memory)
    sizes: list[int] = []
    got = featurize(
        warmed.model, warmed.pool[:5], batch_size=8, on_batch_size=sizes.append, **kwargs
    )
    assert sizes == [4, 2]
    torch.testing.assert_close(got.features, expected.features, rtol=1e-5, atol=1e-6)


def test_adam_feature_map_equals_adam_features() -> None:
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    m = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 1e-3
    v = torch.rand(50, generator=torch.Generator().manual_seed(2)) * 1e-6
    for bias_correction in (False, True):
        fast = AdamFeatureMap(
            m, v, step=7, device=torch.device("cpu"), bias_correction=bias_correction
        )
        slow = adam_features(g, m, v, step=7, bias_correction=bias_correction)
        torch.testing.assert_close(fast(g), slow, rtol=1e-5, atol=1e-7)


def test_default_projection_keeps_cosine_ranks_on_the_tiny_model(warmed: Warmed) -> None:
    """Spearman(SRHT d=8192 cosines, exact cosines) >= 0.99 on LESS's pair scores."""
    p = _n_params(warmed)
    ckpt = warmed.checkpoints[1]

    def feats(examples, kind, projector):  # type: ignore[no-untyped-def]
        return featurize(
            warmed.model,
            examples,
            kind=kind,
            checkpoint=ckpt,
            projector=projector,
            provenance=make_provenance(warmed.model, ckpt, projector, kind=kind),
            batch_size=8,
            pad_token_id=0,
        ).features

    srht = BlockHadamardProjector(_segments(warmed), 8192, seed=0)
    exact = cosine_matrix(
        feats(warmed.pool, "adam", IdentityProjector(p)),
        feats(warmed.probes, "sgd", IdentityProjector(p)),
    )
    projected = cosine_matrix(feats(warmed.pool, "adam", srht), feats(warmed.probes, "sgd", srht))
    rho = spearmanr(exact.flatten().numpy(), projected.flatten().numpy()).statistic
    print(f"\nSpearman(SRHT d=8192, exact) over {exact.numel()} pairs, P={p}: {rho:.4f}")
    assert rho >= 0.99


def test_the_database_accepts_every_feature_kind() -> None:
    assert STORED_KINDS == FEATURE_KINDS


def test_the_system_prompt_is_part_of_the_provenance(warmed: Warmed) -> None:
    """Records tokenized under another system turn are other features: a mismatch names it;
    the template's default (None) keeps the stored form, and so the keys, of older sets."""
    p = _n_params(warmed)
    default = _featurize(warmed, RademacherProjector(p, 64, seed=0)).provenance
    assert "system_prompt" not in default.to_dict()
    assert Provenance.from_dict(default.to_dict()) == default
    dropped = dataclasses.replace(default, system_prompt="")
    assert dropped.to_dict()["system_prompt"] == ""
    assert Provenance.from_dict(dropped.to_dict()) == dropped
    with pytest.raises(ProvenanceMismatch, match="system_prompt"):
        default.require_compatible(dropped, allow_kind_difference=True)
    with pytest.raises(InvalidInput, match="unexpected"):
        Provenance.from_dict({**default.to_dict(), "bogus": 1})
