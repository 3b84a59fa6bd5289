from __future__ import annotations

import pytest
import torch

from workers.engine.data import collate, tokenize_examples
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import response_nll
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import (
    WarmupSettings,
    checkpoint_from_safetensors,
    checkpoint_to_safetensors,
    select_warmup_subset,
    warmup,
)

from .conftest import MAX_LENGTH, Warmed, to_examples


def test_warmup_returns_one_checkpoint_per_epoch(warmed: Warmed) -> None:
    first, second = warmed.checkpoints
    assert (first.epoch, second.epoch) == (1, 2)
    assert (first.step, second.step) == (4, 8)  # 16 examples, batch 4
    assert first.mean_lr > 0 and second.mean_lr > 0
    assert first.mean_lr > second.mean_lr  # linear decay
    names = [n for n, _ in lora_parameters(warmed.model)]
    assert sorted(first.adapter_state) == names == sorted(first.exp_avg) == sorted(first.exp_avg_sq)
    changed = [not torch.equal(first.adapter_state[n], second.adapter_state[n]) for n in names]
    assert all(changed)
    lora_b = [n for n in names if "lora_B" in n]
    assert all(bool(first.adapter_state[n].abs().sum() > 0) for n in lora_b)  # B left 0


def test_warmup_reduces_training_loss_and_is_deterministic() -> None:
    def run() -> tuple[float, float, dict[str, torch.Tensor]]:
        base, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
        model = attach_lora(base, LoraSettings(r=4, alpha=16.0), seed=0)
        train, _ = tokenize_examples(
            tokenizer, to_examples(planted_tasks(4, seed=2), with_subtask=False), MAX_LENGTH
        )
        batch = collate(train[:16], pad_token_id=0)

        def loss() -> float:
            model.eval()
            with torch.no_grad():
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                return float(response_nll(logits, batch["labels"]).mean())

        before = loss()
        ckpts = warmup(
            model,
            train[:16],
            WarmupSettings(epochs=2, learning_rate=3e-3, warmup_ratio=0.1, batch_size=8, seed=1),
            pad_token_id=0,
        )
        return before, loss(), ckpts[-1].adapter_state

    before, after, state = run()
    print(f"\nwarmup training loss: {before:.3f} -> {after:.3f}")
    assert after < before
    _, _, again = run()
    assert all(torch.equal(state[n], again[n]) for n in state)


def test_checkpoint_safetensors_round_trip(warmed: Warmed) -> None:
    ckpt = warmed.checkpoints[1]
    adapter, optimizer = checkpoint_to_safetensors(ckpt)
    restored = checkpoint_from_safetensors(adapter, optimizer)
    assert (restored.epoch, restored.step, restored.mean_lr) == (
        ckpt.epoch,
        ckpt.step,
        ckpt.mean_lr,
    )
    for field in ("adapter_state", "exp_avg", "exp_avg_sq"):
        original, loaded = getattr(ckpt, field), getattr(restored, field)
        assert sorted(original) == sorted(loaded)
        assert all(torch.equal(original[n], loaded[n]) for n in original)
    other_adapter, _ = checkpoint_to_safetensors(warmed.checkpoints[0])
    with pytest.raises(InvalidInput):
        checkpoint_from_safetensors(other_adapter, optimizer)


def test_callbacks_and_cancellation(warmed: Warmed) -> None:
    base, _ = load_model_and_tokenizer(TINY_LLAMA)
    model = attach_lora(base, LoraSettings(r=2, alpha=8.0))
    seen: list[int] = []
    warmup(
        model,
        warmed.pool[:4],
        WarmupSettings(epochs=2, batch_size=2),
        pad_token_id=0,
        on_checkpoint=lambda c: seen.append(c.epoch),
    )
    assert seen == [1, 2]
    with pytest.raises(Cancelled):
        warmup(
            model,
            warmed.pool[:4],
            WarmupSettings(epochs=2, batch_size=2),
            pad_token_id=0,
            should_stop=lambda: True,
        )


def test_select_warmup_subset() -> None:
    subset = select_warmup_subset(100, 0.05, seed=0)
    assert len(subset) == 5 and subset == sorted(subset) and len(set(subset)) == 5
    assert subset == select_warmup_subset(100, 0.05, seed=0)
    assert subset != select_warmup_subset(100, 0.05, seed=1)
    assert len(select_warmup_subset(10, 0.01, seed=0)) == 1
    with pytest.raises(InvalidInput):
        select_warmup_subset(0, 0.5, seed=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": 0.0},
        {"epochs": 0},
        {"learning_rate": 0.0},
        {"warmup_ratio": 1.0},
        {"batch_size": 0},
        {"weight_decay": -1.0},
        {"seed": -1},
    ],
)
def test_bad_warmup_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        WarmupSettings(**kwargs)  # type: ignore[arg-type]
