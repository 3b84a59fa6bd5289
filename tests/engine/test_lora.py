from __future__ import annotations

import pytest
import torch

from workers.engine.errors import InvalidInput, ProvenanceMismatch
from workers.engine.lora import (
    LoraSettings,
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
