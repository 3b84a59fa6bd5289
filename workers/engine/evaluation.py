"""Evaluations: does training on a selection help? (LESS tab. 2, seed 002 NICE tab. 3)

Every *arm* is a training set of the same budget k drawn from one pool (a selection, a
curation, a score set's top k, random k under several seeds, or the full pool). Each arm's run
fine-tunes fresh LoRA adapters — the same initial adapters, settings and training seed for
every arm — with the warmup trainer (``warmup.warmup``: AdamW, linear schedule, response-only
loss), then scores a held-out target set D_T = {z_1..z_N}:

- the response loss L(z_i; θ_arm) = -P_i⁻¹ Σ_p log f(y_i^p | x_i, y_i^<p; θ_arm) (seed 002 §2),
  per example (``target_losses``); the same loss at every checkpoint of a warmup, averaged
  over a held-out set, is the warmup's held-out curve (``heldout_loss_per_epoch``);
- optionally a task metric m_i ∈ [0, 1] per example: multiple-choice accuracy by comparing the
  choices' log-likelihoods (``multiple_choice_correct``), or a reward of the greedy response
  (``greedy_responses`` + ``workers.engine.rewards``: exact match, numeric, python_tests, ...).

An arm with S runs (random arms: one per seed, S ≥ 1) has a per-example matrix V ∈ R^{S×N}.
Its table row (``summarize_arm``) reports the mean of V, a percentile bootstrap interval over
the N evaluation examples of the seed-averaged values v̄_i = S⁻¹ Σ_s V_si
(``bootstrap_interval``), and the spread over seeds (std of the per-seed means, ddof 1).
Against a reference arm (e.g. random k) each arm also gets the paired difference of the
seed-averaged values, v̄_i - v̄_i^ref, with its bootstrap interval (``paired_difference``).

Shapes: ``target_losses`` -> [N] float64; ``heldout_loss_per_epoch`` -> one loss per
checkpoint; ``bootstrap_interval`` takes [N].
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from workers.engine import warmup
from workers.engine.data import Example, TokenizedExample, collate, tokenize_examples
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import response_losses
from workers.engine.lora import load_adapter_state, lora_parameters
from workers.engine.nice import ProbePrompt, prompt_ids

# --- training sets -----------------------------------------------------------------------------


def random_subset(n: int, k: int, seed: int) -> list[int]:
    """A seeded uniform sample of k of ``range(n)`` without replacement, sorted (the random
    arm's training set under ``seed``)."""
    if not 1 <= k <= n:
        raise InvalidInput(f"cannot draw {k} of {n} records (need 1 <= k <= n)")
    return sorted(random.Random(seed).sample(range(n), k))


@dataclass
class FineTuned:
    """One arm run's adapters θ_arm (keyed like ``lora_parameters``) and its training curve:
    the batch's mean response NLL at each optimizer step (before the update) and its lr."""

    adapter_state: dict[str, Tensor]
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    """The step that ends each epoch."""


def fine_tune(
    model: PeftModel,
    train: Sequence[TokenizedExample],
    settings: warmup.WarmupSettings,
    *,
    initial_adapter: Mapping[str, Tensor],
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> FineTuned:
    """Reset the adapters to ``initial_adapter``, then train them on ``train`` with the warmup
    trainer for ``settings.epochs`` epochs (``settings.fraction`` is not applied: ``train`` is
    the arm's whole training set). The same initial adapters and settings for every arm make
    the arms differ in their data only."""
    load_adapter_state(model, dict(initial_adapter))
    out = FineTuned(adapter_state={})

    def on_step(step: int, loss: float, lr: float) -> None:
        out.steps.append(step)
        out.losses.append(loss)
        out.learning_rates.append(lr)

    checkpoints = warmup.warmup(
        model,
        train,
        settings,
        pad_token_id=pad_token_id,
        should_stop=should_stop,
        on_step=on_step,
        on_checkpoint=lambda ckpt: out.epoch_steps.append(ckpt.step),
    )
    out.adapter_state = checkpoints[-1].adapter_state
    return out


# --- scoring the target set --------------------------------------------------------------------


def target_losses(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
) -> Tensor:
    """L(z_i; θ) per example [N] (float64): the mean NLL over each example's response tokens,
    in eval mode (no dropout), without gradients."""
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start : start + batch_size], pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                out.append(response_losses(model, batch, token_loss="mean").double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def heldout_loss_per_epoch(
    model: PeftModel,
    examples: Sequence[TokenizedExample],
    checkpoints: Sequence[warmup.Checkpoint],
    *,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """A warmup's held-out curve: at each checkpoint θ^e, the mean over the N held-out
    examples of L(z_i; θ^e) (``target_losses``: each example's mean response NLL, so every
    example counts once), as ``[{"epoch", "step", "loss"}]`` in checkpoint order.

    Each checkpoint's adapter is loaded into ``model`` in turn; the adapters it held before are
    put back afterwards. ``should_stop`` is polled before each checkpoint (``Cancelled``)."""
    if not examples:
        raise InvalidInput("a held-out curve needs at least one held-out example")
    before = {name: p.detach().clone() for name, p in lora_parameters(model)}
    out: list[dict[str, Any]] = []
    try:
        for ckpt in checkpoints:
            if should_stop is not None and should_stop():
                raise Cancelled(f"held-out loss cancelled at epoch {ckpt.epoch}")
            load_adapter_state(model, ckpt.adapter_state)
            losses = target_losses(
                model, examples, batch_size=batch_size, pad_token_id=pad_token_id
            )
            out.append({"epoch": ckpt.epoch, "step": ckpt.step, "loss": float(losses.mean())})
    finally:
        load_adapter_state(model, before)
    return out


MC_CHOICES, MC_ANSWER = "choices", "answer"
"""Multiple-choice convention: a target record's ``metadata.choices`` is a list of at least two
distinct non-empty strings and ``metadata.answer`` the correct one, as its 0-based index or
as the choice's text. The record's prompt (every message before the response) is the
question; its response is not used by the metric."""


def multiple_choice_answer(record_id: str, metadata: Mapping[str, Any]) -> tuple[list[str], int]:
    """``(choices, index of the answer)`` of a record under the multiple-choice convention;
    InvalidInput naming the record otherwise."""
    choices = metadata.get(MC_CHOICES)
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
        or len(set(choices)) != len(choices)
    ):
        raise InvalidInput(
            f"record {record_id!r}: metadata.{MC_CHOICES} must be a list of at least two "
            f"distinct non-empty strings, got {choices!r}"
        )
    answer = metadata.get(MC_ANSWER)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return choices, answer
    if isinstance(answer, str) and answer in choices:
        return choices, choices.index(answer)
    raise InvalidInput(
        f"record {record_id!r}: metadata.{MC_ANSWER} must be an index into metadata."
        f"{MC_CHOICES} (0..{len(choices) - 1}) or one of the choices, got {answer!r}"
    )


def choice_log_likelihoods(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Mapping[str, str]],
    choices: Sequence[str],
    *,
    max_length: int,
    length_normalized: bool = False,
    system_prompt: str | None = None,
) -> list[float]:
    """log f(c | x; θ) of each choice c as the assistant's response to the prompt messages x
    (formatted as training formats a record, EOS included, ``system_prompt`` as in
    ``data.render_prompt``): the sum over c's tokens, or their mean with
    ``length_normalized``. One batch of len(choices) rows."""
    examples = [
        Example(
            record_id=f"choice-{j}",
            messages=(*({"role": m["role"], "content": m["content"]} for m in prompt),)
            + ({"role": "assistant", "content": c},),
        )
        for j, c in enumerate(choices)
    ]
    tokenized, skipped = tokenize_examples(
        tokenizer, examples, max_length, system_prompt=system_prompt
    )
    if skipped:
        raise InvalidInput(f"a choice does not fit in max_length={max_length}: {skipped[0].reason}")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(tokenized, tokenizer.pad_token_id).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            nll = response_losses(model, batch, token_loss="mean" if length_normalized else "sum")
    finally:
        model.train(was_training)
    return [-float(v) for v in nll.double().cpu()]


def multiple_choice_correct(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[tuple[Sequence[Mapping[str, str]], Sequence[str], int]],
    *,
    max_length: int,
    length_normalized: bool = False,
    system_prompt: str | None = None,
) -> list[float]:
    """1.0 where the answer has the highest log-likelihood of the choices (ties count as
    wrong unless the answer is the first of the tied), else 0.0; one per question
    ``(prompt messages, choices, answer index)``."""
    out = []
    for prompt, choices, answer in questions:
        ll = choice_log_likelihoods(
            model,
            tokenizer,
            prompt,
            choices,
            max_length=max_length,
            length_normalized=length_normalized,
            system_prompt=system_prompt,
        )
        out.append(1.0 if int(np.argmax(ll)) == answer else 0.0)
    return out


def greedy_responses(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ProbePrompt],
    *,
    max_new_tokens: int,
    system_prompt: str | None = None,
) -> list[str]:
    """The greedy (argmax) response to each prompt, decoded without special tokens, ending at
    EOS or after ``max_new_tokens`` tokens. Prompts are formatted as training formats them
    (``nice.prompt_ids``, ``system_prompt`` as there); one prompt per ``generate`` call, so
    no padding enters."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InvalidInput("tokenizer has no EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for probe in prompts:
                ids = torch.tensor([prompt_ids(tokenizer, probe, system_prompt)], device=device)
                generated = model.generate(  # type: ignore[operator]
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
                tokens = generated[0, ids.shape[1] :].tolist()
                if eos in tokens:
                    tokens = tokens[: tokens.index(eos)]
                out.append(str(tokenizer.decode(tokens, skip_special_tokens=True)))
    finally:
        model.train(was_training)
    return out


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile bootstrap interval [low, high] at ``confidence``."""

    mean: float
    low: float
    high: float
    confidence: float
    resamples: int


def bootstrap_means(values: np.ndarray, *, resamples: int, seed: int) -> np.ndarray:
    """The means of ``resamples`` resamples (with replacement, size N) of ``values`` [N]:
    row b draws its N indices from ``numpy.random.default_rng(seed)`` after rows 0..b-1."""
    if values.ndim != 1 or values.size == 0:
        raise InvalidInput(f"bootstrap needs a non-empty vector, got shape {values.shape}")
    if resamples < 1:
        raise InvalidInput(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.size, size=(resamples, values.size))
    means: np.ndarray = values[index].mean(axis=1)
    return means


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` over its N examples: the
    (1-c)/2 and (1+c)/2 quantiles (linear interpolation) of the resampled means."""
    if not 0.0 < confidence < 1.0:
        raise InvalidInput(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(values, dtype=np.float64)
    means = bootstrap_means(x, resamples=resamples, seed=seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(x.mean()), float(low), float(high), confidence, resamples)


@dataclass(frozen=True)
class ArmSummary:
    """One row of the table for one quantity (loss or metric) of one arm."""

    interval: Interval
    per_seed: list[float]
    """The mean over the target set of each run, in run order."""
    seed_std: float | None
    """Std (ddof 1) of ``per_seed``; None for a single run."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.interval.mean,
            "low": self.interval.low,
            "high": self.interval.high,
            "per_seed": self.per_seed,
            "seed_std": self.seed_std,
        }


def summarize_arm(
    runs: Sequence[Sequence[float]], *, resamples: int, confidence: float, seed: int
) -> ArmSummary:
    """``runs`` is V [S, N] (one row per run, the same N target examples in every row): the
    bootstrap interval of the seed-averaged per-example values, and the spread over seeds."""
    v = np.asarray(runs, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise InvalidInput(f"an arm needs runs x examples values, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InvalidInput("an arm's values must be finite")
    per_seed = [float(m) for m in v.mean(axis=1)]
    seed_std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
    interval = bootstrap_interval(
        v.mean(axis=0), resamples=resamples, confidence=confidence, seed=seed
    )
    return ArmSummary(interval=interval, per_seed=per_seed, seed_std=seed_std)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """mean_i (a_i - b_i) over the same N target examples, with a *paired* percentile bootstrap:
    one resample of the examples serves both arms, so the variation shared by the two (hard
    and easy examples) cancels. An interval that excludes 0 separates the arms."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InvalidInput(f"paired values differ in shape: {x.shape} != {y.shape}")
    return bootstrap_interval(x - y, resamples=resamples, confidence=confidence, seed=seed)
