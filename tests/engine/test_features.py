from __future__ import annotations

import dataclasses

import pytest
import torch

from workers.engine.errors import Cancelled, ProvenanceMismatch
from workers.engine.features import FeatureSet, featurize
from workers.engine.lora import lora_parameters
from workers.engine.projection import Projector, RademacherProjector

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
