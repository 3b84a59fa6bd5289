"""Engine per-example gradients and Adam features vs the brute-force reference."""

from __future__ import annotations

import pytest
import torch

from workers.engine.data import collate
from workers.engine.errors import InvalidInput
from workers.engine.features import flat_moments
from workers.engine.gradients import (
    adam_features,
    hooked_per_example_gradients,
    loop_per_example_gradients,
    lora_linear_modules,
    response_losses,
    response_nll,
)
from workers.engine.lora import LoraSettings, attach_lora, load_adapter_state
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer

from .conftest import Warmed
from .reference import reference_adam_feature, reference_gradient

RTOL = 1e-4


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_per_example_gradients_match_reference(warmed: Warmed) -> None:
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    load_adapter_state(model, ckpt.adapter_state)
    model.eval()
    examples = warmed.pool[:5]
    grads = loop_per_example_gradients(model, collate(examples, pad_token_id=0))
    assert grads.dtype == torch.float32 and grads.shape[0] == 5
    for row, example in enumerate(examples):
        expected = reference_gradient(model, example)
        assert expected.norm() > 0
        assert _rel_err(grads[row], expected) < RTOL


def test_padding_in_a_batch_does_not_change_gradients(warmed: Warmed) -> None:
    model = warmed.model
    load_adapter_state(model, warmed.checkpoints[0].adapter_state)
    model.eval()
    examples = sorted(warmed.pool[:6], key=lambda ex: len(ex.input_ids))
    assert len(examples[0].input_ids) < len(examples[-1].input_ids)  # variable lengths
    batched = loop_per_example_gradients(model, collate(examples, pad_token_id=0))
    for row, example in enumerate(examples):
        alone = loop_per_example_gradients(model, collate([example], pad_token_id=0))[0]
        assert _rel_err(batched[row], alone) < 1e-6


def test_per_example_gradients_exact_in_float64(warmed: Warmed) -> None:
    base, _ = load_model_and_tokenizer(TINY_LLAMA, dtype=torch.float64)
    model = attach_lora(base, LoraSettings(r=4, alpha=16.0, dropout=0.1))
    model.to(torch.float64)
    load_adapter_state(model, warmed.checkpoints[-1].adapter_state)
    model.eval()
    examples = warmed.pool[:3]
    grads = loop_per_example_gradients(model, collate(examples, pad_token_id=0))
    assert grads.dtype == torch.float64
    for row, example in enumerate(examples):
        assert _rel_err(grads[row], reference_gradient(model, example)) < 1e-10


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adam_features_match_reference(warmed: Warmed, bias_correction: bool) -> None:
    model, ckpt = warmed.model, warmed.checkpoints[1]
    load_adapter_state(model, ckpt.adapter_state)
    model.eval()
    m, v = flat_moments(model, ckpt)
    grads = loop_per_example_gradients(model, collate(warmed.pool[:3], pad_token_id=0))
    feats = adam_features(grads, m, v, step=ckpt.step, bias_correction=bias_correction)
    for row in range(3):
        expected = reference_adam_feature(
            grads[row].double(),
            m.double(),
            v.double(),
            step=ckpt.step,
            bias_correction=bias_correction,
        )
        assert _rel_err(feats[row], expected) < RTOL


def test_bias_correction_changes_features() -> None:
    g = torch.tensor([[1e-3, -2e-3]])
    m, v = torch.tensor([1e-3, 1e-3]), torch.tensor([1e-6, 1e-6])
    raw = adam_features(g, m, v, step=3)
    corrected = adam_features(g, m, v, step=3, bias_correction=True)
    assert not torch.allclose(raw, corrected)


def test_adam_features_reject_bad_shapes() -> None:
    with pytest.raises(InvalidInput):
        adam_features(torch.zeros(2, 3), torch.zeros(4), torch.zeros(4), step=1)


def test_response_nll_rejects_examples_without_targets() -> None:
    with pytest.raises(InvalidInput):
        response_nll(torch.zeros(1, 3, 5), torch.full((1, 3), -100))


class _FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (older or custom models)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("token_loss", ["mean", "sum"])
def test_response_losses_equal_the_loss_over_full_logits(warmed: Warmed, token_loss: str) -> None:
    """Logits only where a loss is taken: the same losses as the full-logit ``response_nll``,
    with fewer positions through the output layer, and the same on a model without
    ``logits_to_keep``."""
    model = warmed.model
    load_adapter_state(model, warmed.checkpoints[-1].adapter_state)
    model.eval()
    batch = collate(warmed.pool[:6], pad_token_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = response_nll(logits.logits, batch["labels"], token_loss)
        rows_seen: list[int] = []
        lm_head = model.get_base_model().get_output_embeddings()
        hook = lm_head.register_forward_hook(lambda m, a, o: rows_seen.append(a[0].shape[1]))
        try:
            got = response_losses(model, batch, token_loss)
        finally:
            hook.remove()
        fallback = response_losses(_FullLogitsOnly(model), batch, token_loss)
    n_loss_positions = int((batch["labels"][:, 1:] != -100).any(dim=0).sum())
    assert n_loss_positions < batch["input_ids"].shape[1] - 1  # prompt positions to skip
    assert rows_seen == [n_loss_positions]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fallback, expected, rtol=1e-5, atol=1e-6)


# --- batched per-example gradients from hooks (one backward for the whole batch) ----------


def test_hooked_gradients_match_reference_with_padding(warmed: Warmed) -> None:
    """Variable lengths in one padded batch: every row equals its brute-force gradient."""
    model = warmed.model
    load_adapter_state(model, warmed.checkpoints[-1].adapter_state)
    model.eval()
    examples = warmed.pool[:6]
    lengths = {len(ex.input_ids) for ex in examples}
    assert len(lengths) > 1  # padding is exercised
    grads = hooked_per_example_gradients(model, collate(examples, pad_token_id=0))
    assert grads.dtype == torch.float32 and grads.shape[0] == 6
    for row, example in enumerate(examples):
        assert _rel_err(grads[row], reference_gradient(model, example)) < RTOL


def test_hooked_gradients_exact_in_float64(warmed: Warmed) -> None:
    base, _ = load_model_and_tokenizer(TINY_LLAMA, dtype=torch.float64)
    model = attach_lora(base, LoraSettings(r=4, alpha=16.0, dropout=0.1))
    model.to(torch.float64)
    load_adapter_state(model, warmed.checkpoints[-1].adapter_state)
    model.eval()
    examples = warmed.pool[:4]
    grads = hooked_per_example_gradients(model, collate(examples, pad_token_id=0))
    assert grads.dtype == torch.float64
    for row, example in enumerate(examples):
        assert _rel_err(grads[row], reference_gradient(model, example)) < 1e-10


def test_hooked_gradients_leave_no_hooks_behind(warmed: Warmed) -> None:
    model = warmed.model
    model.eval()
    batch = collate(warmed.pool[:2], pad_token_id=0)
    hooked_per_example_gradients(model, batch)
    assert all(not m._forward_hooks for m in lora_linear_modules(model))


def test_hooked_gradients_reject_left_padding(warmed: Warmed) -> None:
    examples = sorted(warmed.pool, key=lambda ex: len(ex.input_ids))
    batch = collate([examples[0], examples[-1]], pad_token_id=0)
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(InvalidInput, match="right-padded"):
        hooked_per_example_gradients(warmed.model, batch)
