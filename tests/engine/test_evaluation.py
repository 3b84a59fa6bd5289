"""Evaluations engine against plain references: per-example target loss recomputed one example
at a time, choice log-likelihoods and greedy decoding by hand, the bootstrap against a loop over
the same resamples, and a planted task where on-target training must beat off-target training."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel

from workers.engine import evaluation
from workers.engine.data import Example, TokenizedExample, tokenize_examples
from workers.engine.errors import InvalidInput
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.nice import ProbePrompt, prompt_ids
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import WarmupSettings

from .conftest import MAX_LENGTH, Warmed, to_examples


def _plain_response_loss(
    model: torch.nn.Module, input_ids: tuple[int, ...], labels: tuple[int, ...]
) -> float:
    """-mean log p(y_t | y_<t) over the response positions, one example, full logits."""
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-float(logp[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100]
    return sum(terms) / len(terms)


def test_target_losses_equal_one_example_at_a_time(warmed: Warmed) -> None:
    model = warmed.model
    model.eval()
    examples = warmed.pool[:7]
    fast = evaluation.target_losses(
        model, examples, batch_size=3, pad_token_id=int(warmed.tokenizer.pad_token_id)
    )
    slow = [_plain_response_loss(model, ex.input_ids, ex.labels) for ex in examples]
    assert fast.dtype == torch.float64 and fast.shape == (7,)
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-5, atol=1e-6)


def test_bootstrap_interval_is_the_percentile_of_the_same_resamples() -> None:
    values = np.random.default_rng(3).normal(1.0, 2.0, size=37)
    got = evaluation.bootstrap_interval(values, resamples=500, confidence=0.9, seed=11)
    rng = np.random.default_rng(11)
    means = []
    for _ in range(500):  # one resample at a time, from the same stream
        idx = rng.integers(0, 37, size=37)
        means.append(sum(values[i] for i in idx) / 37)
    assert got.mean == pytest.approx(float(np.mean(values)))
    assert got.low == pytest.approx(float(np.percentile(means, 5)))
    assert got.high == pytest.approx(float(np.percentile(means, 95)))
    assert got.low < got.mean < got.high


def test_bootstrap_interval_covers_the_true_mean_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(0.0, 1.0, size=40)
        ci = evaluation.bootstrap_interval(sample, resamples=400, confidence=0.9, seed=t)
        covered += ci.low <= 0.0 <= ci.high
    assert 0.80 <= covered / trials <= 0.97  # nominal 0.9; the percentile bootstrap runs narrow


def test_summarize_arm_bootstraps_the_seed_mean_and_reports_the_seed_spread() -> None:
    runs = [[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 4.0], [0.0, 3.0, 3.0, 6.0]]
    summary = evaluation.summarize_arm(runs, resamples=300, confidence=0.95, seed=5)
    per_seed = [2.5, 3.0, 3.0]
    assert summary.per_seed == pytest.approx(per_seed)
    assert summary.seed_std == pytest.approx(statistics.stdev(per_seed))
    seed_mean = np.mean(np.asarray(runs), axis=0)
    ref = evaluation.bootstrap_interval(seed_mean, resamples=300, confidence=0.95, seed=5)
    assert summary.interval == ref
    single = evaluation.summarize_arm([runs[0]], resamples=10, confidence=0.95, seed=0)
    assert single.seed_std is None
    with pytest.raises(InvalidInput):
        evaluation.summarize_arm([[1.0, float("nan")]], resamples=10, confidence=0.9, seed=0)


def test_random_subset_is_seeded_and_exact() -> None:
    a = evaluation.random_subset(50, 7, seed=1)
    assert a == evaluation.random_subset(50, 7, seed=1) and len(set(a)) == 7
    assert a != evaluation.random_subset(50, 7, seed=2)
    with pytest.raises(InvalidInput):
        evaluation.random_subset(5, 6, seed=0)


def _tiny(r: int = 4) -> tuple[PeftModel, Any]:
    base, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
    return attach_lora(base, LoraSettings(r=r, alpha=4.0 * r, dropout=0.0), seed=0), tokenizer


def test_fine_tune_starts_every_arm_from_the_same_adapters() -> None:
    model, tokenizer = _tiny()
    initial = {n: p.detach().clone() for n, p in lora_parameters(model)}
    train, _ = tokenize_examples(
        tokenizer,
        to_examples(planted_tasks(2, seed=0), with_subtask=False),
        MAX_LENGTH,
    )
    settings = WarmupSettings(fraction=1.0, epochs=2, learning_rate=3e-3, batch_size=4, seed=0)
    first = evaluation.fine_tune(model, train, settings, initial_adapter=initial, pad_token_id=0)
    second = evaluation.fine_tune(model, train, settings, initial_adapter=initial, pad_token_id=0)
    assert first.steps == list(range(1, 7)) and first.epoch_steps == [3, 6]  # 10 records, batch 4
    assert first.losses == second.losses  # reset to the same start: the same run
    assert all(torch.equal(first.adapter_state[n], second.adapter_state[n]) for n in initial)
    assert any(not torch.equal(first.adapter_state[n], initial[n]) for n in initial)
    assert len(first.learning_rates) == 6 and first.learning_rates[-1] < first.learning_rates[1]


def test_choice_log_likelihoods_and_multiple_choice_accuracy_by_hand(warmed: Warmed) -> None:
    model, tokenizer = warmed.model, warmed.tokenizer
    model.eval()
    prompt = [{"role": "user", "content": "Capital of France?"}]
    choices = ["Paris", "Rome", "A much longer wrong answer"]
    ll = evaluation.choice_log_likelihoods(model, tokenizer, prompt, choices, max_length=MAX_LENGTH)
    normalized = evaluation.choice_log_likelihoods(
        model, tokenizer, prompt, choices, max_length=MAX_LENGTH, length_normalized=True
    )
    for j, choice in enumerate(choices):
        example = Example("c", (*prompt, {"role": "assistant", "content": choice}))
        (tok,), _ = tokenize_examples(tokenizer, [example], MAX_LENGTH)
        mean_nll = _plain_response_loss(model, tok.input_ids, tok.labels)
        assert ll[j] == pytest.approx(-mean_nll * tok.n_response_tokens, rel=1e-5)
        assert normalized[j] == pytest.approx(-mean_nll, rel=1e-5)
    best = int(np.argmax(ll))
    correct = evaluation.multiple_choice_correct(
        model,
        tokenizer,
        [(prompt, choices, best), (prompt, choices, (best + 1) % 3)],
        max_length=MAX_LENGTH,
    )
    assert correct == [1.0, 0.0]


def test_multiple_choice_convention_names_the_record() -> None:
    assert evaluation.multiple_choice_answer("q", {"choices": ["a", "b"], "answer": 1}) == (
        ["a", "b"],
        1,
    )
    assert evaluation.multiple_choice_answer("q", {"choices": ["a", "b"], "answer": "a"})[1] == 0
    for bad in (
        {"choices": ["a"], "answer": 0},
        {"choices": ["a", "a"], "answer": 0},
        {"choices": ["a", "b"], "answer": 2},
        {"choices": ["a", "b"], "answer": True},
        {"choices": ["a", "b"], "answer": "c"},
        {},
    ):
        with pytest.raises(InvalidInput, match="record 'q'"):
            evaluation.multiple_choice_answer("q", bad)


def test_greedy_responses_follow_the_argmax_token_by_token(warmed: Warmed) -> None:
    model, tokenizer = warmed.model, warmed.tokenizer
    model.eval()
    probes = [
        ProbePrompt("p1", ({"role": "user", "content": "What is 2+3?"},)),
        ProbePrompt("p2", ({"role": "user", "content": "Uppercase: stone"},)),
    ]
    got = evaluation.greedy_responses(model, tokenizer, probes, max_new_tokens=6)
    for probe, text in zip(probes, got, strict=True):
        ids = list(prompt_ids(tokenizer, probe))
        new: list[int] = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == tokenizer.eos_token_id:
                    break
                new.append(nxt)
        assert text == tokenizer.decode(new, skip_special_tokens=True)


DEFAULT_TURN = "<|system|>\nDefault.\n"
BRIEF_TURN = "<|system|>\nBe brief.\n"
NO_CUT = 256  # max_length that cuts none of these prompts


def test_system_prompt_reaches_the_choices_and_the_greedy_prompts() -> None:
    """The builtin byte tokenizer (one token per byte) under a template that adds a default
    system turn, as SmolLM2's does: what the model is fed grows or shrinks by exactly that
    turn's bytes, and a set system prompt scores as the record's own system message would."""
    model, tokenizer = _tiny()
    model.eval()
    tokenizer.chat_template = "{{ bos_token }}{% if messages[0]['role'] != 'system' %}" + (
        DEFAULT_TURN + "{% endif %}" + tokenizer.chat_template.removeprefix("{{ bos_token }}")
    )
    fed: list[int] = []  # the sequence length of every forward, as the embedding layer sees it
    model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: fed.append(int(args[0].shape[-1]))
    )
    user = [{"role": "user", "content": "Capital of France?"}]
    own = [{"role": "system", "content": "Be brief."}, *user]
    choices = ["Paris", "Rome"]

    def choice_length(prompt: list[dict[str, str]], system_prompt: str | None) -> int:
        fed.clear()
        evaluation.choice_log_likelihoods(
            model, tokenizer, prompt, choices, max_length=NO_CUT, system_prompt=system_prompt
        )
        return fed[0]

    dropped = choice_length(user, "")
    assert choice_length(user, None) == dropped + len(DEFAULT_TURN)
    assert choice_length(user, "Be brief.") == dropped + len(BRIEF_TURN)
    assert choice_length(own, "") == choice_length(own, None) == dropped + len(BRIEF_TURN)
    brief = evaluation.choice_log_likelihoods(
        model, tokenizer, user, choices, max_length=NO_CUT, system_prompt="Be brief."
    )
    assert brief == evaluation.choice_log_likelihoods(
        model, tokenizer, own, choices, max_length=NO_CUT
    )
    questions = [(user, choices, int(np.argmax(brief)))]
    assert evaluation.multiple_choice_correct(
        model, tokenizer, questions, max_length=NO_CUT, system_prompt="Be brief."
    ) == [1.0]

    def greedy(messages: list[dict[str, str]], system_prompt: str | None) -> tuple[int, str]:
        fed.clear()
        (text,) = evaluation.greedy_responses(
            model,
            tokenizer,
            [ProbePrompt("p", tuple(messages))],
            max_new_tokens=3,
            system_prompt=system_prompt,
        )
        return fed[0], text  # the first forward holds the whole prompt

    prompt_dropped, _ = greedy(user, "")
    assert greedy(user, None)[0] == prompt_dropped + len(DEFAULT_TURN)
    assert greedy(user, "Be brief.") == greedy(own, None)
    assert greedy(user, "Be brief.")[0] == prompt_dropped + len(BRIEF_TURN)


def test_on_target_training_lowers_the_target_loss_more_than_off_target() -> None:
    """A planted task the tiny model learns in a few steps: 'repeat the letter' answers. An arm
    of that task must end with a lower loss on held-out records of it than an arm of the same
    size from another task, trained identically."""
    model, tokenizer = _tiny(r=8)
    records = planted_tasks(24, seed=4)
    by_task: dict[str, list[Example]] = {}
    for ex in to_examples(records, with_subtask=True):
        by_task.setdefault(str(ex.subtask), []).append(ex)

    def tok(examples: list[Example]) -> list[TokenizedExample]:
        out, skipped = tokenize_examples(tokenizer, examples, MAX_LENGTH)
        assert not skipped
        return out

    target = tok(by_task["repeat_letter"][16:])
    on_target, off_target = tok(by_task["repeat_letter"][:16]), tok(by_task["arithmetic"][:16])
    initial = {n: p.detach().clone() for n, p in lora_parameters(model)}
    settings = WarmupSettings(fraction=1.0, epochs=3, learning_rate=1e-2, batch_size=4, seed=0)
    losses = {}
    for name, train in (("on", on_target), ("off", off_target)):
        evaluation.fine_tune(model, train, settings, initial_adapter=initial, pad_token_id=0)
        losses[name] = evaluation.target_losses(model, target, batch_size=8, pad_token_id=0)
    on = evaluation.bootstrap_interval(losses["on"].numpy(), resamples=500, seed=0)
    off = evaluation.bootstrap_interval(losses["off"].numpy(), resamples=500, seed=0)
    assert on.high < off.low, (on, off)


def test_paired_difference_resamples_both_arms_together() -> None:
    rng = np.random.default_rng(7)
    hardness = rng.normal(0.0, 3.0, size=60)  # shared by both arms: cancels when paired
    a, b = hardness + 0.5 + rng.normal(0, 0.1, 60), hardness + rng.normal(0, 0.1, 60)
    paired = evaluation.paired_difference(a, b, resamples=400, seed=1)
    assert paired == evaluation.bootstrap_interval(a - b, resamples=400, seed=1)
    assert 0.0 < paired.low < 0.5 < paired.high  # separated, although ...
    unpaired_a = evaluation.bootstrap_interval(a, resamples=400, seed=1)
    unpaired_b = evaluation.bootstrap_interval(b, resamples=400, seed=2)
    assert unpaired_a.low < unpaired_b.high  # ... the arms' own intervals overlap
    with pytest.raises(InvalidInput):
        evaluation.paired_difference([1.0, 2.0], [1.0], resamples=10)


def test_evaluation_figure_renders_every_arm() -> None:
    from workers.engine import plots

    q = {"mean": 2.0, "low": 1.5, "high": 2.5, "per_seed": [1.9, 2.1], "seed_std": 0.14}
    curve = {"seed": 0, "steps": [1, 2, 3], "loss": [3.0, 2.5, 2.0]}
    result = {
        "n_target": 8,
        "metric": "numeric reward",
        "confidence": 0.95,
        "arms": [
            {"name": "LESS top", "loss": q, "metric": q, "curves": [curve]},
            {"name": "random", "loss": q, "metric": q, "curves": [curve, curve]},
        ],
        "base": {"loss": q, "metric": q},
    }
    figure = plots.evaluation_figure(result, title="demo")
    svg = plots.render(figure, "svg")
    assert b"LESS top" in svg and b"before training" in svg
    png = plots.render(plots.evaluation_figure(result, title="demo"), "png")
    assert png.startswith(b"\x89PNG") and png == plots.render(figure, "png")


def _merged_base_model(adapter_state: dict[str, torch.Tensor], scale: float) -> torch.nn.Module:
    """The tiny Llama as loaded, with each LoRA pair merged by hand: W + scale · B A (no peft)."""
    base, _ = load_model_and_tokenizer(TINY_LLAMA)
    weights = dict(base.named_parameters())
    for name, a in adapter_state.items():
        if ".lora_A." not in name:
            continue
        b = adapter_state[name.replace(".lora_A.", ".lora_B.")]
        module = name.removeprefix("base_model.model.").split(".lora_A.")[0]
        with torch.no_grad():
            weights[f"{module}.weight"].add_(scale * (b @ a))
    return base.eval()


def test_heldout_loss_per_epoch_equals_each_checkpoint_merged_by_hand(warmed: Warmed) -> None:
    """At each checkpoint: the mean over held-out examples of the mean response NLL, from a
    plain forward of the base model with that checkpoint's adapters merged into its weights;
    the model gets its own adapters back."""
    model, heldout = warmed.model, warmed.probes
    before = {name: p.detach().clone() for name, p in lora_parameters(model)}
    model.train()
    got = evaluation.heldout_loss_per_epoch(
        model,
        heldout,
        warmed.checkpoints,
        batch_size=2,
        pad_token_id=int(warmed.tokenizer.pad_token_id),
    )
    assert [(e["epoch"], e["step"]) for e in got] == [(c.epoch, c.step) for c in warmed.checkpoints]
    for entry, ckpt in zip(got, warmed.checkpoints, strict=True):
        merged = _merged_base_model(ckpt.adapter_state, scale=16.0 / 4)  # alpha / r
        slow = [_plain_response_loss(merged, ex.input_ids, ex.labels) for ex in heldout]
        assert entry["loss"] == pytest.approx(statistics.fmean(slow), rel=1e-5)
    assert got[0]["loss"] != pytest.approx(got[1]["loss"], rel=1e-4)  # the epochs differ
    assert model.training  # dropout back on, as the caller left it
    for name, p in lora_parameters(model):
        assert torch.equal(p, before[name])
    with pytest.raises(InvalidInput, match="at least one held-out example"):
        evaluation.heldout_loss_per_epoch(
            model, [], warmed.checkpoints, batch_size=2, pad_token_id=0
        )
