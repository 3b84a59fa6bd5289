from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import get_linear_schedule_with_warmup

from service.valuations.service import warmup_schedule
from workers.contracts import WarmupSpec
from workers.engine import warmup as warmup_module
from workers.engine.data import TokenizedExample, collate, tokenize_examples
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import response_nll
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import (
    LossCurve,
    WarmupSettings,
    check_schedule_learns,
    checkpoint_from_safetensors,
    checkpoint_to_safetensors,
    schedule_steps,
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


def _plain_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL over the batch's response tokens by a plain forward and cross-entropy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )


def test_loss_curve_equals_a_plain_training_loop() -> None:
    """The recorded loss of every step equals a hand-written loop's (plain forward, torch
    AdamW, the linear schedule written out), and each epoch's mean is the mean of its steps."""
    settings = WarmupSettings(
        epochs=2, learning_rate=3e-3, warmup_ratio=0.2, batch_size=4, seed=3
    )  # 10 examples: 3 steps per epoch, T = 6, W = ceil(1.2) = 2
    lora_settings = LoraSettings(r=4, alpha=16.0, dropout=0.0)  # no dropout: deterministic

    def fresh() -> tuple[PeftModel, list[TokenizedExample]]:
        base, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
        train, _ = tokenize_examples(
            tokenizer, to_examples(planted_tasks(2, seed=4), with_subtask=False), MAX_LENGTH
        )
        return attach_lora(base, lora_settings, seed=0), train[:10]

    model, train = fresh()
    curve = LossCurve()
    warmup(
        model,
        train,
        settings,
        pad_token_id=0,
        on_step=curve.on_step,
        on_checkpoint=lambda c: curve.end_epoch(c.epoch, c.step),
    )

    ref_model, ref_train = fresh()
    params = [p for _, p in lora_parameters(ref_model)]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    total, warm = 6, 2
    losses: list[float] = []
    lrs: list[float] = []
    ref_model.train()
    for epoch in (1, 2):
        order = torch.randperm(
            10, generator=torch.Generator().manual_seed(warmup_module._epoch_seed(3, epoch))
        ).tolist()
        for start in range(0, 10, 4):
            batch = collate([ref_train[i] for i in order[start : start + 4]], 0)
            s = len(losses)
            lr = settings.learning_rate * (s / warm if s < warm else (total - s) / (total - warm))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _plain_nll(ref_model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            lrs.append(lr)
    assert curve.step == [1, 2, 3, 4, 5, 6]
    assert curve.loss == pytest.approx(losses, rel=1e-5)
    assert curve.learning_rate == pytest.approx(lrs, rel=1e-9, abs=1e-15)
    assert curve.learning_rate[0] == 0.0 and curve.loss[1] != curve.loss[2]
    assert curve.to_dict()["epochs"] == [
        {"epoch": 1, "step": 3, "train_loss": pytest.approx(sum(losses[:3]) / 3, rel=1e-5)},
        {"epoch": 2, "step": 6, "train_loss": pytest.approx(sum(losses[3:]) / 3, rel=1e-5)},
    ]


def test_a_schedule_that_cannot_learn_is_refused_exactly_when_every_lr_is_0() -> None:
    """check_schedule_learns against the scheduler warmup() uses, run for every step."""
    for n, batch, epochs, ratio in itertools.product(
        (1, 3, 4, 5), (1, 4, 8), (1, 2), (0.0, 0.03, 0.5, 0.99)
    ):
        settings = WarmupSettings(epochs=epochs, batch_size=batch, warmup_ratio=ratio)
        _, total, warm = schedule_steps(n, settings)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, warm, total)
        lrs = []
        for _ in range(total):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        assert total == epochs * math.ceil(n / batch)
        if all(lr == 0 for lr in lrs):
            with pytest.raises(InvalidInput, match="cannot learn") as caught:
                check_schedule_learns(n, settings)
            assert f"ceil({ratio} x 1) = 1 warmup step" in str(caught.value)
        else:
            check_schedule_learns(n, settings)


def test_one_warmup_step_is_taken_at_learning_rate_0(warmed: Warmed) -> None:
    """What check_schedule_learns refuses, in a real warmup: its only step has lr 0."""
    base, _ = load_model_and_tokenizer(TINY_LLAMA)
    model = attach_lora(base, LoraSettings(r=2, alpha=8.0))
    curve = LossCurve()
    settings = WarmupSettings(epochs=1, batch_size=4)
    ckpts = warmup(model, warmed.pool[:4], settings, pad_token_id=0, on_step=curve.on_step)
    assert curve.learning_rate == [0.0] and ckpts[0].mean_lr == 0.0
    with pytest.raises(InvalidInput, match="warmup_ratio 0.03"):
        check_schedule_learns(4, settings)


def test_the_api_computes_the_engines_warmup_schedule() -> None:
    """The API (no torch) repeats the subset size and schedule arithmetic of the engine."""
    for n, fraction, batch, epochs, ratio in itertools.product(
        (1, 7, 10, 100), (0.05, 0.3, 1.0), (1, 4, 16), (1, 3), (0.0, 0.03)
    ):
        spec = WarmupSpec.model_validate(
            {"fraction": fraction, "batch_size": batch, "epochs": epochs, "warmup_ratio": ratio}
        )
        settings = WarmupSettings(**spec.model_dump())
        n_train = len(select_warmup_subset(n, fraction, seed=0))
        assert warmup_schedule(n, spec) == (n_train, *schedule_steps(n_train, settings))


def test_loss_curve_rejects_an_epoch_without_steps() -> None:
    curve = LossCurve()
    curve.on_step(1, 2.0, 0.1)
    curve.on_step(2, 4.0, 0.1)
    curve.end_epoch(1, 2)
    assert curve.epochs == [{"epoch": 1, "step": 2, "train_loss": 3.0}]
    with pytest.raises(InvalidInput, match="recorded no step"):
        curve.end_epoch(2, 2)
