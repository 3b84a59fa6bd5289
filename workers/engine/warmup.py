"""Warmup training: LoRA on a small random subset, one checkpoint θ^e per epoch (LESS step 1).

TracIn sums over checkpoints θ^1..θ^E, weighting each by the mean learning rate η̄_e of its
epoch (seed 002 §2.1), and the Adam features of pool data need the optimizer moments m^e, v^e
(app. F). A ``Checkpoint`` therefore stores the adapter, the moments and η̄_e.

Optimiser and schedule as in LESS (HF Trainer defaults): AdamW(β=(0.9, 0.999), ε=1e-8), linear
warmup over ceil(warmup_ratio · total_steps) steps then linear decay to 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from transformers import get_linear_schedule_with_warmup

from workers.engine.data import IGNORE_INDEX, TokenizedExample, collate
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import response_losses
from workers.engine.lora import lora_parameters
from workers.engine.safetensors_meta import read_metadata

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class WarmupSettings:
    """LESS defaults: 5% of the pool, 4 epochs, lr 2e-5, warmup ratio 0.03, batch 16."""

    fraction: float = 0.05
    epochs: int = 4
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    batch_size: int = 16
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise InvalidInput(f"warmup fraction must be in (0, 1], got {self.fraction!r}")
        if _not_int(self.epochs) or self.epochs < 1:
            raise InvalidInput(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.learning_rate > 0.0:
            raise InvalidInput(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidInput(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if _not_int(self.batch_size) or self.batch_size < 1:
            raise InvalidInput(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not self.weight_decay >= 0.0:
            raise InvalidInput(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if _not_int(self.seed) or self.seed < 0:
            raise InvalidInput(f"seed must be an integer >= 0, got {self.seed!r}")


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


@dataclass
class Checkpoint:
    """θ^e after epoch ``epoch`` (1-based): adapter, Adam moments m^e, v^e and η̄_e, on CPU fp32.

    ``adapter_state``, ``exp_avg`` and ``exp_avg_sq`` are keyed by ``lora_parameters`` names;
    ``step`` counts optimizer steps so far (the t of Adam's bias correction).
    """

    epoch: int
    step: int
    mean_lr: float
    adapter_state: dict[str, Tensor]
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]


def schedule_steps(n_train: int, settings: WarmupSettings) -> tuple[int, int, int]:
    """``(steps per epoch, total steps, warmup steps)`` of a warmup on ``n_train`` examples:
    ceil(n_train / batch_size), epochs times that, ceil(warmup_ratio · total)."""
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    return steps_per_epoch, total_steps, math.ceil(settings.warmup_ratio * total_steps)


def check_schedule_learns(n_train: int, settings: WarmupSettings) -> None:
    """``InvalidInput`` saying why and what to change when every step's learning rate is 0.

    The linear schedule's multiplier at 0-based step s is s / W during the W warmup steps,
    then (T - s) / (T - W): it is 0 at s = 0 only when W >= 1, and W <= T (warmup_ratio < 1).
    So every step has learning rate 0 exactly when T = 1 and W = 1: one optimizer step, spent
    warming up from 0 (and TracIn/LESS then weigh the only checkpoint by 0).
    """
    steps_per_epoch, total, warmup_steps = schedule_steps(n_train, settings)
    if total == 1 and warmup_steps >= 1:
        raise InvalidInput(
            f"this warmup cannot learn: {n_train} training examples at batch_size "
            f"{settings.batch_size} make {steps_per_epoch} step per epoch, x {settings.epochs} "
            f"epoch = {total} optimizer step, and warmup_ratio {settings.warmup_ratio} makes "
            f"ceil({settings.warmup_ratio} x {total}) = {warmup_steps} warmup step, taken at "
            "learning rate 0; set warmup_ratio to 0, or train for at least 2 steps (more "
            "epochs, a larger warmup fraction of the pool or a smaller batch_size)"
        )


class LossCurve:
    """The warmup's training curve, fed by ``warmup``'s ``on_step`` and ``on_checkpoint``:
    the batch's mean response NLL and learning rate at every optimizer step, and per epoch
    the mean of its steps' losses (each step counts once, as HF Trainer logs it)."""

    def __init__(self) -> None:
        self.step: list[int] = []
        self.loss: list[float] = []
        self.learning_rate: list[float] = []
        self.epochs: list[dict[str, Any]] = []

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.step.append(step)
        self.loss.append(loss)
        self.learning_rate.append(lr)

    def end_epoch(self, epoch: int, step: int) -> None:
        """Close epoch ``epoch`` at optimizer step ``step``: the mean of the losses since the
        previous epoch ended."""
        start = self.epochs[-1]["step"] if self.epochs else 0
        losses = [loss for s, loss in zip(self.step, self.loss, strict=True) if start < s <= step]
        if not losses:
            raise InvalidInput(f"epoch {epoch} ends at step {step} but recorded no step")
        self.epochs.append(
            {"epoch": epoch, "step": step, "train_loss": math.fsum(losses) / len(losses)}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "learning_rate": list(self.learning_rate),
            "epochs": [dict(e) for e in self.epochs],
        }


def select_warmup_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Seeded uniform sample of ``ceil(fraction · n)`` (at least 1) of ``range(n)``, sorted."""
    if n < 1:
        raise InvalidInput(f"cannot select a warmup subset of an empty pool (n={n})")
    if not 0.0 < fraction <= 1.0:
        raise InvalidInput(f"warmup fraction must be in (0, 1], got {fraction!r}")
    k = max(1, math.ceil(round(fraction * n, 9)))  # round: 0.3 * 10 is 3.0000000000000004
    return sorted(random.Random(seed).sample(range(n), k))


def warmup(
    model: PeftModel,
    train: Sequence[TokenizedExample],
    settings: WarmupSettings,
    *,
    pad_token_id: int,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> list[Checkpoint]:
    """Train the adapters for ``settings.epochs`` epochs and return one checkpoint per epoch.

    ``train`` is the warmup subset itself (pick it with ``select_warmup_subset``; the
    ``fraction`` setting is not applied here).

    Each step minimises the mean NLL over all response tokens of the batch. Batches are drawn
    from a per-epoch seeded permutation; dropout draws from a forked, seeded RNG. So a run is a
    function of (model, train, settings) and leaves the global RNG untouched.
    ``should_stop`` is polled before every step; ``True`` raises ``Cancelled``. ``on_step``
    gets ``(step, loss, lr)`` after each optimizer step (1-based step, the batch's mean
    response NLL before the update, the learning rate it was taken with): the training curve.
    """
    if not train:
        raise InvalidInput("warmup needs at least one training example")
    params = lora_parameters(model)
    if not params:
        raise InvalidInput("model has no trainable LoRA parameters; call attach_lora first")
    device = params[0][1].device
    _, total_steps, warmup_steps = schedule_steps(len(train), settings)
    optimizer = torch.optim.AdamW(
        [p for _, p in params],
        lr=settings.learning_rate,
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        weight_decay=settings.weight_decay,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
    )
    checkpoints: list[Checkpoint] = []
    step = 0
    was_training = model.training
    model.train()
    try:
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(settings.seed)
            for epoch in range(1, settings.epochs + 1):
                order = torch.randperm(
                    len(train),
                    generator=torch.Generator().manual_seed(_epoch_seed(settings.seed, epoch)),
                ).tolist()
                lrs: list[float] = []
                for start in range(0, len(train), settings.batch_size):
                    if should_stop is not None and should_stop():
                        raise Cancelled(f"warmup cancelled at epoch {epoch}, step {step}")
                    batch = collate(
                        [train[i] for i in order[start : start + settings.batch_size]], pad_token_id
                    )
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = _batch_response_nll(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    lrs.append(float(scheduler.get_last_lr()[0]))
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    if on_step is not None:
                        on_step(step, float(loss.detach()), lrs[-1])
                checkpoint = _snapshot(
                    params, optimizer, epoch=epoch, step=step, mean_lr=sum(lrs) / len(lrs)
                )
                checkpoints.append(checkpoint)
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint)
    finally:
        model.train(was_training)
    return checkpoints


def _epoch_seed(seed: int, epoch: int) -> int:
    """Distinct shuffling seeds for every (seed, epoch); seed + epoch would repeat across runs."""
    return seed * 1_000_003 + epoch


def _batch_response_nll(model: PeftModel, batch: dict[str, Tensor]) -> Tensor:
    """Mean NLL over all response tokens of the batch (token-weighted, as HF Trainer)."""
    n_targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    return response_losses(model, batch, token_loss="sum").sum() / n_targets


def _snapshot(
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    step: int,
    mean_lr: float,
) -> Checkpoint:
    def cpu32(t: Tensor) -> Tensor:
        return t.detach().to(device="cpu", dtype=torch.float32).clone()

    return Checkpoint(
        epoch=epoch,
        step=step,
        mean_lr=mean_lr,
        adapter_state={name: cpu32(p) for name, p in params},
        exp_avg={name: cpu32(optimizer.state[p]["exp_avg"]) for name, p in params},
        exp_avg_sq={name: cpu32(optimizer.state[p]["exp_avg_sq"]) for name, p in params},
    )


_EXP_AVG, _EXP_AVG_SQ = "exp_avg.", "exp_avg_sq."


def checkpoint_to_safetensors(ckpt: Checkpoint) -> tuple[bytes, bytes]:
    """``(adapter, optimizer)`` safetensors blobs; the second holds the moments and, in its
    metadata, ``epoch``, ``step`` and ``mean_lr`` (``repr`` of the float: exact round trip)."""
    meta = {"epoch": str(ckpt.epoch), "step": str(ckpt.step), "mean_lr": repr(ckpt.mean_lr)}
    adapter = save_safetensors(
        {k: v.contiguous() for k, v in ckpt.adapter_state.items()},
        metadata={**meta, "kind": "sift.adapter"},
    )
    moments = {_EXP_AVG + k: v.contiguous() for k, v in ckpt.exp_avg.items()}
    moments |= {_EXP_AVG_SQ + k: v.contiguous() for k, v in ckpt.exp_avg_sq.items()}
    optimizer = save_safetensors(moments, metadata={**meta, "kind": "sift.adam_moments"})
    return adapter, optimizer


def checkpoint_from_safetensors(adapter: bytes, optimizer: bytes) -> Checkpoint:
    """Inverse of ``checkpoint_to_safetensors``; the two blobs must be from the same epoch."""
    meta = read_metadata(optimizer)
    adapter_meta = read_metadata(adapter)
    try:
        epoch, step, mean_lr = int(meta["epoch"]), int(meta["step"]), float(meta["mean_lr"])
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"optimizer blob lacks checkpoint metadata: {exc}") from exc
    if (adapter_meta.get("epoch"), adapter_meta.get("step")) != (meta["epoch"], meta["step"]):
        raise InvalidInput(
            f"adapter (epoch {adapter_meta.get('epoch')}) and optimizer (epoch {epoch}) blobs "
            "come from different checkpoints"
        )
    moments = load_safetensors(optimizer)
    return Checkpoint(
        epoch=epoch,
        step=step,
        mean_lr=mean_lr,
        adapter_state=dict(load_safetensors(adapter)),
        exp_avg={k[len(_EXP_AVG) :]: v for k, v in moments.items() if k.startswith(_EXP_AVG)},
        exp_avg_sq={
            k[len(_EXP_AVG_SQ) :]: v for k, v in moments.items() if k.startswith(_EXP_AVG_SQ)
        },
    )
