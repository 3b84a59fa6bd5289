from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.lora import (
    LoraSettings,
    adapter_state_from_peft,
    attach_lora,
    load_adapter_state,
    lora_parameters,
    parameter_order_hash,
)
from workers.engine.models import build_tiny_llama


def test_lora_parameters_sorted_and_init_deterministic() -> None:
    a = attach_lora(build_tiny_llama(0), LoraSettings(r=4, alpha=16.0), seed=3)
    b = attach_lora(build_tiny_llama(0), LoraSettings(r=4, alpha=16.0), seed=3)
    names = [n for n, _ in lora_parameters(a)]
    assert names == sorted(names) and len(names) == 2 * 4 * 2  # A, B x 4 modules x 2 layers
    for (_, pa), (_, pb) in zip(lora_parameters(a), lora_parameters(b), strict=True):
        assert torch.equal(pa, pb)
    assert parameter_order_hash(a) == parameter_order_hash(b)
    c = attach_lora(build_tiny_llama(0), LoraSettings(r=2, alpha=8.0), seed=3)
    assert parameter_order_hash(c) != parameter_order_hash(a)


def test_load_adapter_state_is_strict() -> None:
    model = attach_lora(build_tiny_llama(0), LoraSettings(r=4, alpha=16.0))
    state = {n: torch.ones_like(p) for n, p in lora_parameters(model)}
    load_adapter_state(model, state)
    assert all(bool((p == 1).all()) for _, p in lora_parameters(model))
    name = next(iter(state))
    with pytest.raises(ProvenanceMismatch, match="missing"):
        load_adapter_state(model, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ProvenanceMismatch, match="unexpected"):
        load_adapter_state(model, {**state, "extra": torch.zeros(1)})
    with pytest.raises(ProvenanceMismatch, match="shape"):
        load_adapter_state(model, {**state, name: torch.zeros(3, 3)})


@pytest.mark.parametrize(
    "kwargs", [{"r": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"target_modules": ()}]
)
def test_bad_lora_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        LoraSettings(**kwargs)  # type: ignore[arg-type]


def test_unmatched_target_modules() -> None:
    with pytest.raises(InvalidInput):
        attach_lora(build_tiny_llama(0), LoraSettings(r=2, alpha=8.0, target_modules=("nope",)))


def test_peft_saved_adapter_loads_into_lora_parameters() -> None:
    """An adapter saved the PEFT way (no adapter name in its keys) round-trips exactly."""
    settings = LoraSettings(r=4, alpha=16.0)
    trained = attach_lora(build_tiny_llama(0), settings, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in lora_parameters(trained):
            p.add_(torch.randn(p.shape, generator=generator))
    saved = save_safetensors(
        {k: v.contiguous() for k, v in get_peft_model_state_dict(trained).items()}
    )
    state = load_safetensors(saved)
    assert all(".default." not in key for key in state)  # PEFT dropped the adapter name

    fresh = attach_lora(build_tiny_llama(0), settings, seed=5)
    load_adapter_state(fresh, adapter_state_from_peft(state))
    for (name, p), (fresh_name, q) in zip(
        lora_parameters(trained), lora_parameters(fresh), strict=True
    ):
        assert name == fresh_name and torch.equal(p, q)

    named = adapter_state_from_peft(dict(lora_parameters(trained)))  # already named: unchanged
    assert list(named) == [name for name, _ in lora_parameters(trained)]


def test_adapter_state_from_peft_refuses_other_tensors() -> None:
    state = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
        "base_model.model.model.embed_tokens.weight": torch.zeros(4, 8),
    }
    with pytest.raises(InvalidInput, match="embed_tokens"):
        adapter_state_from_peft(state)
    with pytest.raises(InvalidInput, match="other"):
        adapter_state_from_peft({"m.q_proj.lora_B.other.weight": torch.zeros(8, 2)})
