"""Quality scores vs a brute-force loop, vs padding, and vs numbers worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.engine.data import IGNORE_INDEX, TokenizedExample, tokenize_examples
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import response_nll
from workers.engine.models import TINY_LLAMA, build_byte_tokenizer, load_model_and_tokenizer
from workers.engine.quality import (
    IFD_SCORE_NAMES,
    SCORE_NAMES,
    QualityScores,
    quality_scores,
    response_only_example,
    response_only_prefix,
)
from workers.engine.synthetic import planted_tasks

from .conftest import MAX_LENGTH, to_examples

Model = tuple[PreTrainedModel, PreTrainedTokenizerBase]


@pytest.fixture(scope="module")
def tiny32() -> Model:
    return load_model_and_tokenizer(TINY_LLAMA)


@pytest.fixture(scope="module")
def tiny64() -> Model:
    return load_model_and_tokenizer(TINY_LLAMA, dtype=torch.float64)


def _examples(
    tokenizer: PreTrainedTokenizerBase, max_length: int = MAX_LENGTH
) -> list[TokenizedExample]:
    records = planted_tasks(2, seed=0)
    kept, skipped = tokenize_examples(
        tokenizer, to_examples(records, with_subtask=False), max_length
    )
    assert skipped == []
    return kept


# --- brute force: one unpadded example at a time, every formula written out -------------------


def _reference_scores(model: nn.Module, input_ids: list[int], labels: list[int]) -> dict:
    """The module docstring's formulas, token by token and vocabulary entry by entry."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()  # [T, V]
    nll, el2n, entropy, margin, p_target = [], [], [], [], []
    for t in range(1, len(input_ids)):
        y = labels[t]
        if y == IGNORE_INDEX:
            continue
        p = torch.softmax(logits[t - 1], dim=0).tolist()  # predicts token t
        nll.append(-math.log(p[y]))
        el2n.append(math.sqrt(sum((p_v - (v == y)) ** 2 for v, p_v in enumerate(p))))
        entropy.append(-sum(p_v * math.log(p_v) for p_v in p if p_v > 0))
        first, second = sorted(p, reverse=True)[:2]
        margin.append(first - second)
        p_target.append(p[y])
    n = len(nll)
    return {
        "nll": sum(nll) / n,
        "perplexity": math.exp(sum(nll) / n),
        "el2n": sum(el2n) / n,
        "u_entropy": sum(entropy) / n,
        "u_confidence": -math.prod(p_target),
        "u_margin": -sum(margin) / n,
        "u_min_margin": -min(margin),
    }


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_scores_match_brute_force_reference(
    tiny32: Model, tiny64: Model, dtype: torch.dtype, rel: float
) -> None:
    model, tokenizer = tiny64 if dtype == torch.float64 else tiny32
    examples = _examples(tokenizer)
    prefix = list(response_only_prefix(tokenizer))
    scores = quality_scores(model, examples, batch_size=4, pad_token_id=0, response_prefix=prefix)
    assert scores.record_ids == [ex.record_id for ex in examples]
    for i, ex in enumerate(examples):
        expected = _reference_scores(model, list(ex.input_ids), list(ex.labels))
        response = [y for y in ex.labels if y != IGNORE_INDEX]
        expected["nll_a"] = _reference_scores(
            model, prefix + response, [IGNORE_INDEX] * len(prefix) + response
        )["nll"]
        expected["ifd"] = expected["nll"] / expected["nll_a"]
        assert int(scores.n_response_tokens[i]) == len(response) == ex.n_response_tokens
        for name, value in expected.items():
            # U_confidence = -exp(-Σ NLL) carries the sum's float32 error relative to itself.
            tol = rel * ex.n_response_tokens if name == "u_confidence" else rel
            got = float(getattr(scores, name)[i])
            assert got == pytest.approx(value, rel=tol, abs=1e-12), (ex.record_id, name)


def test_batched_equals_one_at_a_time_with_padding(tiny32: Model, tiny64: Model) -> None:
    for (model, tokenizer), rel in ((tiny32, 1e-5), (tiny64, 1e-12)):
        examples = sorted(_examples(tokenizer), key=lambda ex: len(ex.input_ids))
        assert len(examples[0].input_ids) < len(examples[-1].input_ids)  # padding happens
        prefix = response_only_prefix(tokenizer)
        batched = quality_scores(
            model, examples, batch_size=len(examples), pad_token_id=0, response_prefix=prefix
        )
        alone = quality_scores(
            model, examples, batch_size=1, pad_token_id=0, response_prefix=prefix
        )
        for name, value in batched.columns().items():
            torch.testing.assert_close(value, alone.columns()[name], rtol=rel, atol=1e-14)


def test_slicing_the_response_tokens_changes_nothing(tiny64: Model) -> None:
    model, tokenizer = tiny64
    examples = _examples(tokenizer)[:4]
    whole = quality_scores(model, examples, batch_size=4, pad_token_id=0)
    one_row_at_a_time = quality_scores(
        model, examples, batch_size=4, pad_token_id=0, chunk_elements=1
    )
    for name, value in whole.columns().items():
        torch.testing.assert_close(value, one_row_at_a_time.columns()[name], rtol=1e-13, atol=0)


# --- IFD ---------------------------------------------------------------------------------------


def test_ifd_is_the_ratio_of_the_two_losses_computed_separately(tiny32: Model) -> None:
    model, tokenizer = tiny32
    examples = _examples(tokenizer)
    prefix = response_only_prefix(tokenizer)
    scores = quality_scores(model, examples, batch_size=3, pad_token_id=0, response_prefix=prefix)
    assert scores.ifd is not None and scores.nll_a is not None
    for i, ex in enumerate(examples):
        losses = []
        for seq in (ex, response_only_example(ex, prefix)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq.input_ids])).logits
            losses.append(float(response_nll(logits, torch.tensor([seq.labels]))[0]))
        nll_aq, nll_a = losses  # Sift's training loss, with and without the instruction
        assert float(scores.nll[i]) == pytest.approx(nll_aq, rel=1e-5)
        assert float(scores.nll_a[i]) == pytest.approx(nll_a, rel=1e-5)
        assert float(scores.ifd[i]) == pytest.approx(nll_aq / nll_a, rel=1e-5)


def test_response_only_prefix_is_the_assistant_header() -> None:
    tokenizer = build_byte_tokenizer()
    prefix = response_only_prefix(tokenizer)
    assert tokenizer.decode(list(prefix)) == "<s><|assistant|>\n"
    # Each conditional prompt ends with the same header: y_1 follows it in both NLLs.
    for ex in _examples(tokenizer):
        n_prompt = len(ex.input_ids) - ex.n_response_tokens
        assert ex.input_ids[n_prompt - len(prefix) + 1 : n_prompt] == prefix[1:]
    tokenizer.chat_template = None  # default format: the bare generation prompt
    assert tokenizer.decode(list(response_only_prefix(tokenizer))) == "<|assistant|>\n"


def test_response_only_example_keeps_exactly_the_scored_tokens() -> None:
    tokenizer = build_byte_tokenizer()
    prefix = response_only_prefix(tokenizer)
    full = {ex.record_id: ex for ex in _examples(tokenizer, max_length=200)}
    truncated = [ex for ex in _examples(tokenizer) if ex.truncated]
    assert truncated  # a response cut short by max_length
    for ex in truncated:
        alone = response_only_example(ex, prefix)
        scored = [y for y in ex.labels if y != IGNORE_INDEX]
        assert alone.input_ids == prefix + tuple(scored)
        assert alone.labels == (IGNORE_INDEX,) * len(prefix) + tuple(scored)
        assert (
            alone.n_response_tokens == ex.n_response_tokens < full[ex.record_id].n_response_tokens
        )


def test_a_template_that_cannot_render_the_assistant_alone_is_an_error() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(InvalidInput, match="response_prefix"):
        response_only_prefix(tokenizer)


# --- hand-computed cases with fake models ------------------------------------------------------


class FixedLogits(nn.Module):
    """A "model" whose logits [B, T, V] are set by hand, cut to the batch it is given."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[: input_ids.shape[0], : input_ids.shape[1]])


def _log(*probs: float) -> list[float]:
    return [math.log(p) if p > 0 else -math.inf for p in probs]


def test_scores_worked_by_hand() -> None:
    garbage = [9.0, -9.0, 3.0]  # prompt and padding positions: must not count
    logits = torch.tensor(
        [
            # record a: input (0, 0, 1, 2), labels (-, -, 1, 2): y=1 read at t=1, y=2 at t=2
            [garbage, _log(0.5, 0.25, 0.25), _log(0.8, 0.1, 0.1), garbage],
            # record b: input (0, 0, 1), labels (-, 0, 1): y=0 at t=0, y=1 at t=1; t=3 is padding
            [_log(0.5, 0.5, 0.0), _log(0.25, 0.5, 0.25), garbage, garbage],
        ],
        dtype=torch.float64,
    )
    examples = [
        TokenizedExample("a", (0, 0, 1, 2), (-100, -100, 1, 2), None, 2, False),
        TokenizedExample("b", (0, 0, 1), (-100, 0, 1), None, 2, False),
    ]
    scores = quality_scores(FixedLogits(logits), examples, batch_size=2, pad_token_id=0)
    ln2 = math.log(2)
    expected = {
        # a: p(y) = .25 and .1. NLL = (ln 4 + ln 10) / 2; PPL = 1/sqrt(.25 * .1) = sqrt(40).
        # EL2N: |(.5, -.75, .25)| = sqrt(.875), |(.8, .1, -.9)| = sqrt(1.46).
        # H: 1.5 ln 2 for (.5, .25, .25); .8 ln 1.25 + .2 ln 10 for (.8, .1, .1).
        # U_conf = -(.25 * .1); margins .5 - .25 = .25 and .8 - .1 = .7.
        # b: p(y) = .5 and .5 (the -inf logit is a masked token: probability 0, no NaN).
        # NLL = ln 2, PPL = 2. EL2N: |(-.5, .5, 0)| = sqrt(.5), |(.25, -.5, .25)| = sqrt(.375).
        # H: ln 2 for (.5, .5, 0); 1.5 ln 2 for (.25, .5, .25). U_conf = -(.5 * .5).
        # margins .5 - .5 = 0 and .5 - .25 = .25.
        "nll": [(math.log(4) + math.log(10)) / 2, ln2],
        "perplexity": [math.sqrt(40), 2.0],
        "el2n": [
            (math.sqrt(0.875) + math.sqrt(1.46)) / 2,
            (math.sqrt(0.5) + math.sqrt(0.375)) / 2,
        ],
        "u_entropy": [(1.5 * ln2 + 0.8 * math.log(1.25) + 0.2 * math.log(10)) / 2, 1.25 * ln2],
        "u_confidence": [-0.025, -0.25],
        "u_margin": [-(0.25 + 0.7) / 2, -(0.0 + 0.25) / 2],
        "u_min_margin": [-0.25, 0.0],
    }
    assert scores.n_response_tokens.tolist() == [2, 2]
    for name, values in expected.items():
        got = getattr(scores, name)
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(values, rel=1e-12, abs=1e-15), name
    assert scores.ifd is None and scores.nll_a is None


class QuerySensitive(nn.Module):
    """A causal "model": the next-token distribution depends on the current token only, and on
    whether token Q=2 has occurred so far (rows ``with_q`` or ``without_q``)."""

    def __init__(self, with_q: list[float], without_q: list[float]) -> None:
        super().__init__()
        self.with_q = torch.tensor(_log(*with_q), dtype=torch.float64)
        self.without_q = torch.tensor(_log(*without_q), dtype=torch.float64)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        seen_q = ((input_ids == 2).cumsum(dim=1) > 0)[..., None]  # [B, T, 1]
        return SimpleNamespace(logits=torch.where(seen_q, self.with_q, self.without_q))


def test_ifd_worked_by_hand() -> None:
    # Tokens: 1 = assistant header G, 2 = the instruction Q, 3 = a response word.
    # After Q: P = (1/6, 1/6, 1/6, 1/2); without it: uniform 1/4.
    model = QuerySensitive([1 / 6, 1 / 6, 1 / 6, 1 / 2], [1 / 4] * 4)
    examples = [
        TokenizedExample("helped", (2, 1, 3, 3), (-100, -100, 3, 3), None, 2, False),
        TokenizedExample("hindered", (2, 1, 1), (-100, -100, 1), None, 1, False),
    ]
    scores = quality_scores(model, examples, batch_size=2, pad_token_id=0, response_prefix=[1])
    assert scores.nll_a is not None and scores.ifd is not None
    # helped: NLL^{A|Q} = -ln(1/2) (both 3s follow Q); alone (1, 3, 3): NLL^A = -ln(1/4).
    #   IFD = ln 2 / ln 4 = 1/2: the instruction halves the loss.
    # hindered: A = (1,); with Q P(1) = 1/6, alone 1/4: IFD = ln 6 / ln 4 > 1.
    assert scores.nll.tolist() == pytest.approx([math.log(2), math.log(6)], rel=1e-12)
    assert scores.nll_a.tolist() == pytest.approx([math.log(4), math.log(4)], rel=1e-12)
    assert scores.ifd.tolist() == pytest.approx([0.5, math.log(6) / math.log(4)], rel=1e-12)


# --- API contract ------------------------------------------------------------------------------


def test_columns_and_model_mode(tiny32: Model) -> None:
    model, tokenizer = tiny32
    examples = _examples(tokenizer)[:3]
    model.train()
    progress: list[int] = []
    scores = quality_scores(
        model,
        examples,
        batch_size=2,
        pad_token_id=0,
        response_prefix=response_only_prefix(tokenizer),
        on_progress=progress.append,
    )
    assert model.training  # restored
    model.eval()
    assert progress == [2, 3]
    assert list(scores.columns()) == ["n_response_tokens", *SCORE_NAMES, *IFD_SCORE_NAMES]
    assert all(v.shape == (3,) for v in scores.columns().values())
    with pytest.raises(Cancelled):
        quality_scores(model, examples, batch_size=2, pad_token_id=0, should_stop=lambda: True)


def test_bad_inputs_raise(tiny32: Model) -> None:
    model, tokenizer = tiny32
    examples = _examples(tokenizer)[:2]
    no_response = TokenizedExample("empty", (1, 5, 6), (-100, -100, -100), None, 0, False)
    with pytest.raises(InvalidInput, match="empty"):
        quality_scores(model, [*examples, no_response], batch_size=2, pad_token_id=0)
    with pytest.raises(InvalidInput):
        quality_scores(model, [], batch_size=2, pad_token_id=0)
    with pytest.raises(InvalidInput):
        quality_scores(model, examples, batch_size=0, pad_token_id=0)
    with pytest.raises(InvalidInput, match="prefix"):
        quality_scores(model, examples, batch_size=2, pad_token_id=0, response_prefix=[])
    with pytest.raises(InvalidInput):
        QualityScores(["a"], *(torch.zeros(2) for _ in range(8)))


def test_a_response_token_at_probability_zero_is_an_error() -> None:
    logits = torch.tensor([[_log(0.5, 0.5, 0.0), _log(0.5, 0.5, 0.0)]], dtype=torch.float64)
    example = TokenizedExample("impossible", (0, 2), (-100, 2), None, 1, False)
    with pytest.raises(InvalidInput, match="impossible"):
        quality_scores(FixedLogits(logits), [example], batch_size=1, pad_token_id=0)


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_peaked_model_matches_brute_force(dtype: torch.dtype, rel: float) -> None:
    """Logits scaled up: confident predictions, margins far from 0 (the random init is near
    uniform, where every margin is ~1e-4)."""
    model, tokenizer = load_model_and_tokenizer(TINY_LLAMA, dtype=dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    examples = _examples(tokenizer)
    prefix = list(response_only_prefix(tokenizer))
    scores = quality_scores(model, examples, batch_size=4, pad_token_id=0, response_prefix=prefix)
    assert float(scores.u_margin.max()) < -0.1 and float(scores.u_entropy.min()) < 3.0
    for i, ex in enumerate(examples):
        expected = _reference_scores(model, list(ex.input_ids), list(ex.labels))
        response = [y for y in ex.labels if y != IGNORE_INDEX]
        nll_a = _reference_scores(model, prefix + response, [IGNORE_INDEX] * len(prefix) + response)
        expected["ifd"] = expected["nll"] / nll_a["nll"]
        for name, value in expected.items():
            tol = rel * ex.n_response_tokens if name == "u_confidence" else rel
            got = float(getattr(scores, name)[i])
            assert got == pytest.approx(value, rel=tol, abs=1e-12), (ex.record_id, name)
