"""The optimizer-step arithmetic of ``workers.engine.warmup`` (``schedule_steps``), for the
API, which cannot import the engine (torch): one place, held equal to the engine's by
``tests/engine/test_warmup.py``.

A linear schedule with warmup starts at learning rate 0: when the whole run is one optimizer
step and ``warmup_ratio > 0``, that step is the warmup's first and nothing is learned. The API
refuses such settings before a job exists (:func:`refuse_lr_zero`)."""

from __future__ import annotations

import math

from service.errors import InvalidInput


def schedule(
    n_train: int, batch_size: int, epochs: int, warmup_ratio: float
) -> tuple[int, int, int]:
    """``(steps per epoch, total steps, warmup steps)`` of training on ``n_train`` examples."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    total = epochs * steps_per_epoch
    return steps_per_epoch, total, math.ceil(warmup_ratio * total)


def refuse_lr_zero(
    n_train: int, batch_size: int, epochs: int, warmup_ratio: float, *, what: str, field: str
) -> None:
    """A 422 on ``field`` when every step of this training would have learning rate 0."""
    steps_per_epoch, total, warmup_steps = schedule(n_train, batch_size, epochs, warmup_ratio)
    if total == 1 and warmup_steps >= 1:
        raise InvalidInput(
            f"this training cannot learn: {what} = {n_train} training examples, at batch_size "
            f"{batch_size} {steps_per_epoch} step per epoch, x {epochs} epoch = {total} "
            f"optimizer step; warmup_ratio {warmup_ratio} makes ceil({warmup_ratio} x {total}) "
            f"= {warmup_steps} warmup step, taken at learning rate 0. Set warmup_ratio to 0, "
            "or train for at least 2 steps (more epochs or a smaller batch_size)",
            field=field,
        )
