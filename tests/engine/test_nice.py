"""NICE policy-gradient probe features vs a brute-force reference; sampling; weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workers.engine.data import Example, tokenize_examples
from workers.engine.errors import InvalidInput
from workers.engine.features import Provenance
from workers.engine.influence import cosine_matrix
from workers.engine.lora import lora_parameters
from workers.engine.models import build_byte_tokenizer
from workers.engine.nice import (
    ProbePrompt,
    Sample,
    SamplingSettings,
    policy_gradient_features,
    prompt_ids,
    sample_responses,
    sample_weights,
)
from workers.engine.projection import BlockHadamardProjector, IdentityProjector, Projector

from .conftest import Warmed, make_provenance
from .reference import reference_policy_gradient


def _probes(warmed: Warmed, n: int = 2) -> list[ProbePrompt]:
    return [
        ProbePrompt(
            record_id=f"q{i}",
            messages=({"role": "user", "content": f"What is {i}+{i}?"},),
            subtask="arithmetic",
            label=str(2 * i),
        )
        for i in range(n)
    ]


def _policy_provenance(warmed: Warmed, projector: Projector, max_length: int = 256) -> Provenance:
    ckpt = warmed.checkpoints[-1]
    base = make_provenance(warmed.model, ckpt, projector, kind="sgd", max_length=max_length)
    return dataclasses.replace(base, kind="policy")


def test_sample_weights() -> None:
    assert sample_weights([1.0, 0.0, 1.0, 0.0], "reinforce") == [0.25, 0.0, 0.25, 0.0]
    assert sample_weights([1.0, 0.0, 1.0, 0.0], "baseline") == [0.125, -0.125, 0.125, -0.125]
    assert sample_weights([2.0, 0.0, 1.0, -1.0], "rejection") == [1.0, 0.0, 0.5, 0.0]
    assert sample_weights([0.0, 0.0], "rejection") == [0.0, 0.0]
    assert sample_weights([1.0, 1.0], "baseline") == [0.0, 0.0]
    with pytest.raises(InvalidInput):
        sample_weights([float("nan")], "reinforce")
    with pytest.raises(InvalidInput):
        sample_weights([], "reinforce")


def test_sampling_is_seeded_and_stops_at_eos(warmed: Warmed) -> None:
    probes = _probes(warmed, 3)
    settings = SamplingSettings(m=4, max_new_tokens=12, seed=1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = sample_responses(warmed.model, warmed.tokenizer, probes, settings, batch_size=2)
    assert torch.rand(1) == before  # the caller's RNG stream is untouched
    again = sample_responses(warmed.model, warmed.tokenizer, probes, settings, batch_size=2)
    other = sample_responses(
        warmed.model, warmed.tokenizer, probes, dataclasses.replace(settings, seed=2), batch_size=2
    )
    assert first == again and first != other
    assert [s.probe_id for s in first] == [p.record_id for p in probes for _ in range(4)]
    eos = warmed.tokenizer.eos_token_id
    for s in first:
        assert 1 <= len(s.response_ids) <= 12
        assert s.finished == (s.response_ids[-1] == eos)
        assert eos not in s.response_ids[:-1]
        assert s.prompt_ids == tuple(prompt_ids(warmed.tokenizer, probes[int(s.probe_id[1:])]))


@pytest.mark.parametrize("weighting", ["reinforce", "baseline", "rejection"])
def test_policy_features_equal_brute_force(warmed: Warmed, weighting: str) -> None:
    """ψ per probe equals Σ_j w_j (-∇ log f) by plain autograd, exact and projected."""
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    probes = _probes(warmed, 2)
    samples = sample_responses(
        model, warmed.tokenizer, probes, SamplingSettings(m=3, max_new_tokens=10, seed=0)
    )
    eos = warmed.tokenizer.eos_token_id
    empty = Sample("q1", 3, samples[-1].prompt_ids, (eos,), "", True)  # an empty generation
    samples = [*samples, empty]
    rewards = [1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 2.0]
    p = sum(x.numel() for _, x in lora_parameters(model))
    sizes = [x.numel() for _, x in lora_parameters(model)]
    for projector in (IdentityProjector(p), BlockHadamardProjector(sizes, 512, seed=3)):
        got = policy_gradient_features(
            model,
            probes,
            samples,
            rewards,
            weighting=weighting,  # type: ignore[arg-type]
            checkpoint=ckpt,
            projector=projector,
            provenance=_policy_provenance(warmed, projector),
            batch_size=3,
            pad_token_id=int(warmed.tokenizer.pad_token_id),
        )
        assert got.features.provenance.kind == "policy"
        model.eval()
        for row, probe in enumerate(probes):
            mine = [i for i, s in enumerate(samples) if s.probe_id == probe.record_id]
            expected = reference_policy_gradient(
                model,
                samples[mine[0]].prompt_ids,
                [samples[i].response_ids for i in mine],
                [rewards[i] for i in mine],
                weighting,
            )
            expected = projector.project(expected.float()[None])[0].double()
            err = (got.features.features[row].double() - expected).norm() / expected.norm()
            assert float(err) < 1e-4, (type(projector).__name__, probe.record_id, float(err))
            assert bool(torch.isfinite(got.features.features[row]).all())


def test_all_zero_rewards_give_a_zero_feature_not_nan(warmed: Warmed) -> None:
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    probes = _probes(warmed, 2)
    samples = sample_responses(
        model, warmed.tokenizer, probes, SamplingSettings(m=2, max_new_tokens=6, seed=0)
    )
    p = sum(x.numel() for _, x in lora_parameters(model))
    projector = IdentityProjector(p)
    got = policy_gradient_features(
        model,
        probes,
        samples,
        [0.0, 0.0, 1.0, 0.0],
        weighting="reinforce",
        checkpoint=ckpt,
        projector=projector,
        provenance=_policy_provenance(warmed, projector),
        batch_size=4,
        pad_token_id=int(warmed.tokenizer.pad_token_id),
    )
    assert got.zero_probes == ["q0"]
    assert float(got.features.features[0].abs().max()) == 0.0
    assert float(got.features.features[1].abs().max()) > 0.0
    cos = cosine_matrix(got.features.features[1:2].repeat(2, 1), got.features.features)
    assert bool(torch.isfinite(cos).all()) and float(cos[0, 0]) == 0.0


def test_policy_features_check_their_inputs(warmed: Warmed) -> None:
    probes = _probes(warmed, 1)
    p = sum(x.numel() for _, x in lora_parameters(warmed.model))
    projector = IdentityProjector(p)
    sample = Sample("q0", 0, (1, 2, 3), (4,), "", False)
    common = dict(
        weighting="reinforce",
        checkpoint=warmed.checkpoints[-1],
        projector=projector,
        batch_size=2,
        pad_token_id=0,
    )
    with pytest.raises(InvalidInput, match="samples but"):
        policy_gradient_features(
            warmed.model,
            probes,
            [sample],
            [1.0, 2.0],
            provenance=_policy_provenance(warmed, projector),
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidInput, match="policy"):
        policy_gradient_features(
            warmed.model,
            probes,
            [sample],
            [1.0],
            provenance=make_provenance(warmed.model, warmed.checkpoints[-1], projector, kind="sgd"),
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidInput, match="no samples"):
        policy_gradient_features(
            warmed.model,
            probes,
            [],
            [],
            provenance=_policy_provenance(warmed, projector),
            **common,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("system_prompt", [None, "", "Be brief."])
def test_probe_prompts_are_formatted_like_training_records(system_prompt: str | None) -> None:
    """NICE's prompt ids are the prompt part of ``tokenize_examples``' ids, system prompt
    setting included (a template with a default system turn, like SmolLM2's)."""
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>\nDefault.\n"
        "{% endif %}" + tokenizer.chat_template.removeprefix("{{ bos_token }}")
    )
    user = {"role": "user", "content": "What is 3+4?"}
    example = Example("r", (user, {"role": "assistant", "content": "7"}))
    [tok], _ = tokenize_examples(tokenizer, [example], 64, system_prompt=system_prompt)
    ids = prompt_ids(tokenizer, ProbePrompt("r", (user,)), system_prompt)
    assert list(tok.input_ids[: len(ids)]) == ids and len(tok.input_ids) == len(ids) + 2
    assert ("Default." in tokenizer.decode(ids)) == (system_prompt is None)
