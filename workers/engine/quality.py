"""Per-record quality scores from one model (seed 003 §3.2): loss, IFD, EL2N and uncertainty.

A record x = Q ⊕ A is scored on its response tokens only: the targets of Sift's training loss
(``data.tokenize_examples``: the assistant content followed by EOS; prompt and padding are
labelled ``-100``). With P response tokens y_1..y_P and p_j = softmax(logits at the position
before y_j) ∈ R^V the model's predictive distribution for y_j:

    NLL          = -P⁻¹ Σ_j log p_j[y_j]                     (eq. 7, over the response)
    PPL          = exp(NLL)                                   (eq. 7)
    EL2N         = P⁻¹ Σ_j ||p_j - onehot(y_j)||_2            (eq. 10)
    IFD          = NLL^{A|Q} / NLL^A                          (eq. 12)
    U_entropy    = P⁻¹ Σ_j H(p_j),  H(p) = -Σ_v p_v log p_v   (eq. 14)
    U_confidence = -Π_j p_j[y_j] = -exp(-P·NLL)               (eq. 15)
    U_margin     = -P⁻¹ Σ_j (β1(p_j) - β2(p_j))               (eq. 16)
    U_min_margin = -min_j (β1(p_j) - β2(p_j))                 (eq. 17)

with β1, β2 the largest and second-largest entries of p_j. Logs are natural: NLL and H are in
nats and PPL = e^NLL. The seed writes PPL = 2^NLL, the same number only when NLL is taken in
bits; perplexity does not depend on the base as long as exponential and log match, and nats
keep NLL equal to Sift's training loss (``gradients.response_nll``).

Readings of the seed. Eq. 7 averages over all |x_i| tokens; here over the response only, as
NLL^{A|Q} of eq. 12 and Sift's loss do, so NLL = NLL^{A|Q}. Eq. 14 as printed (split over two
lines by the extraction) keeps only the observed token's P log P and no sign; we implement the
quantity it names, the mean Shannon entropy of the whole predictive distribution (Settles
2011). Every U grows with uncertainty. Margins are on probabilities, not logits, and do not
involve y_j. U_confidence underflows to -0.0 in float64 once P·NLL exceeds ~745 nats: for long
responses rank by NLL instead.

IFD's NLL^A scores the same P targets with the instruction removed: the response-only input is
the chat formatting of the assistant turn alone followed by the response tokens,
``response_only_prefix(tokenizer) ⊕ A`` (``<s><|assistant|>\\n`` ⊕ A for the builtin template),
so both NLLs average over exactly the same tokens, each first predicted after the same
assistant header; Q (every earlier message, system included) is all that is gone. A template
that injects a default system prompt into a conversation without one keeps it in both.

Shapes: B records per batch, T tokens, V vocabulary, N response tokens in a batch. A batch
costs one forward pass (two with IFD), padding masked; every score is float64 per record.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from workers.engine.data import IGNORE_INDEX, Example, TokenizedExample, collate, format_example
from workers.engine.errors import Cancelled, InvalidInput

SCORE_NAMES: tuple[str, ...] = (
    "nll",
    "perplexity",
    "el2n",
    "u_entropy",
    "u_confidence",
    "u_margin",
    "u_min_margin",
)
"""Scores of every record, from the forward pass on Q ⊕ A."""
IFD_SCORE_NAMES: tuple[str, ...] = ("nll_a", "ifd")
"""Scores that need the second forward pass on the response alone."""

DEFAULT_CHUNK_ELEMENTS = 1 << 25
"""Float64 entries of one [rows, V] slice of response-token distributions (256 MiB): bounds the
memory of the per-token statistics whatever the vocabulary size."""

_SENTINEL = "\ue000sift-response\ue000"
"""Private-use characters no chat template writes: marks where the response content starts."""


@dataclass
class QualityScores:
    """Per-record scores [N] in float64, aligned with ``record_ids`` (formulas: module docstring).

    ``nll_a`` and ``ifd`` are None when no response-only prefix was given.
    """

    record_ids: list[str]
    n_response_tokens: Tensor
    nll: Tensor
    perplexity: Tensor
    el2n: Tensor
    u_entropy: Tensor
    u_confidence: Tensor
    u_margin: Tensor
    u_min_margin: Tensor
    nll_a: Tensor | None = None
    ifd: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        for name, value in self.columns().items():
            if value.shape != (n,):
                raise InvalidInput(f"{name} has shape {tuple(value.shape)}, expected ({n},)")

    def columns(self) -> dict[str, Tensor]:
        """Every score present, by name (``n_response_tokens`` included): e.g. for safetensors."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "record_ids" and (value := getattr(self, f.name)) is not None
        }


def response_only_prefix(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Token ids put before the response when the instruction is removed (NLL^A of eq. 12).

    With a chat template: the rendering of a conversation holding only the assistant turn, cut
    where its content starts (transformers refuses to render an empty conversation with a
    generation prompt). Without one: ``data.format_example`` on no history, i.e. the default
    ``<|assistant|>\\n`` with the tokenizer's usual special tokens, as ``tokenize_examples``
    tokenizes prompts. A template that cannot render an assistant turn alone (some insist on
    user/assistant alternation) is an error: pass your own ``response_prefix`` then.
    """
    if tokenizer.chat_template is None:
        bare = Example("response-only", ({"role": "assistant", "content": ""},))
        prompt, _ = format_example(tokenizer, bare)
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "assistant", "content": _SENTINEL}], tokenize=False
            )
        except Exception as exc:  # jinja's raise_exception, or transformers' own checks
            raise InvalidInput(
                f"the chat template cannot render an assistant turn alone ({exc}); build the "
                "response-only prefix by hand and pass it as response_prefix"
            ) from exc
        if not isinstance(rendered, str) or rendered.count(_SENTINEL) != 1:
            raise InvalidInput("the chat template does not write the assistant content once")
        ids = tokenizer(rendered[: rendered.index(_SENTINEL)], add_special_tokens=False)[
            "input_ids"
        ]
    if not ids:
        raise InvalidInput("the response-only prefix is empty: nothing would predict y_1")
    return tuple(int(i) for i in ids)


def response_only_example(example: TokenizedExample, prefix: Sequence[int]) -> TokenizedExample:
    """``prefix ⊕ A`` with the same targets A as ``example`` (its scored, possibly truncated,
    response tokens), for NLL^A of eq. 12. The response must be the labelled suffix of
    ``example``, as ``tokenize_examples`` makes it."""
    if not prefix:
        raise InvalidInput("the response-only prefix is empty: nothing would predict y_1")
    response = tuple(label for label in example.labels[1:] if label != IGNORE_INDEX)
    n = len(response)
    if n == 0:
        raise InvalidInput(f"record {example.record_id!r}: no response token to score")
    if example.input_ids[-n:] != response or IGNORE_INDEX in example.labels[-n:]:
        raise InvalidInput(
            f"record {example.record_id!r}: the response tokens are not the labelled suffix "
            "of the input (tokenize it with data.tokenize_examples)"
        )
    prefix_ids = tuple(int(i) for i in prefix)
    return TokenizedExample(
        record_id=example.record_id,
        input_ids=prefix_ids + response,
        labels=(IGNORE_INDEX,) * len(prefix_ids) + response,
        subtask=example.subtask,
        n_response_tokens=n,
        truncated=example.truncated,
    )


def response_token_scores(
    logits: Tensor,
    labels: Tensor,
    *,
    only_nll: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, Tensor]:
    """The ``SCORE_NAMES`` of each row of a batch: logits [B, T, V], labels [B, T] -> [B] each.

    As in ``gradients.response_nll``, logits at t predict token t+1 and positions labelled
    ``-100`` (prompt, padding) are skipped. Only the N response positions are gathered, in
    slices of at most ``chunk_elements`` float64 entries, so memory does not grow with the
    prompt or the padding. ``only_nll`` skips everything but ``nll``.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise InvalidInput(
            f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}"
        )
    n_batch, _, n_vocab = logits.shape
    if n_vocab < 2:
        raise InvalidInput(f"margins need a vocabulary of at least 2 tokens, got {n_vocab}")
    if chunk_elements < 1:
        raise InvalidInput(f"chunk_elements must be >= 1, got {chunk_elements}")
    targets = labels[:, 1:]
    is_target = targets != IGNORE_INDEX
    n_targets = is_target.sum(dim=1)
    if bool((n_targets == 0).any()):
        raise InvalidInput("a record has no response token to score")
    rows, cols = is_target.nonzero(as_tuple=True)  # [N]: logits[rows, cols] predicts targets
    f64, device = torch.float64, logits.device
    sum_nll, sum_el2n, sum_entropy, sum_margin = (
        torch.zeros(n_batch, dtype=f64, device=device) for _ in range(4)
    )
    min_margin = torch.full((n_batch,), math.inf, dtype=f64, device=device)
    step = max(1, chunk_elements // n_vocab)
    for start in range(0, rows.numel(), step):
        r, c = rows[start : start + step], cols[start : start + step]
        y = targets[r, c][:, None]  # [n, 1]
        log_p = torch.log_softmax(logits[r, c].to(torch.float64), dim=-1)  # [n, V]
        sum_nll.index_add_(0, r, -log_p.gather(1, y).squeeze(1))
        if only_nll:
            continue
        p = log_p.exp()
        error = p.scatter_add(
            1, y, torch.full(y.shape, -1.0, dtype=f64, device=device)
        )  # p - onehot(y)
        sum_el2n.index_add_(0, r, torch.linalg.vector_norm(error, dim=1))
        sum_entropy.index_add_(0, r, -torch.where(p > 0, p * log_p, 0.0).sum(dim=1))
        top2 = p.topk(2, dim=1).values
        margin = top2[:, 0] - top2[:, 1]
        sum_margin.index_add_(0, r, margin)
        min_margin.scatter_reduce_(0, r, margin, reduce="amin")
    count = n_targets.to(torch.float64)
    nll = sum_nll / count
    if only_nll:
        return {"nll": nll}
    return {
        "nll": nll,
        "perplexity": nll.exp(),
        "el2n": sum_el2n / count,
        "u_entropy": sum_entropy / count,
        "u_confidence": -(-sum_nll).exp(),
        "u_margin": -sum_margin / count,
        "u_min_margin": -min_margin,
    }


def quality_scores(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
    response_prefix: Sequence[int] | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_batch_size: Callable[[int], None] | None = None,
) -> QualityScores:
    """Quality scores of every example (module docstring), in batches of ``batch_size``.

    ``model(input_ids=, attention_mask=)`` must return an object with ``.logits`` [B, T, V] (any
    HF causal LM, with or without LoRA); it runs in eval mode (no dropout), and its mode is
    restored after. With ``response_prefix`` (``response_only_prefix(tokenizer)``) each batch
    gets a second forward pass on the response alone, for ``nll_a`` and ``ifd``.

    Examples come from ``data.tokenize_examples``, which reports records left with no response
    token as skipped; one without a target here is an error naming it. ``batch_size`` is an
    upper bound: a batch that runs out of accelerator memory is retried at half the size
    (``on_batch_size`` hears of it); scores do not depend on the batch size beyond rounding.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    if not examples:
        raise InvalidInput("no examples to score")
    empty = [ex.record_id for ex in examples if all(y == IGNORE_INDEX for y in ex.labels[1:])]
    if empty:
        raise InvalidInput(f"records with no response token to score: {empty}")
    alone = (
        None
        if response_prefix is None
        else [response_only_example(ex, response_prefix) for ex in examples]
    )
    device = _device_of(model)

    def scores_of(chunk: Sequence[TokenizedExample], only_nll: bool) -> dict[str, Tensor]:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = response_token_scores(
            logits, batch["labels"], only_nll=only_nll, chunk_elements=chunk_elements
        )
        return {name: value.cpu() for name, value in out.items()}

    parts: list[dict[str, Tensor]] = []
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(examples):
            if should_stop is not None and should_stop():
                raise Cancelled(f"quality scoring cancelled after {start} of {len(examples)}")
            end = min(start + batch_size, len(examples))
            try:
                with torch.inference_mode():
                    part = scores_of(examples[start:end], only_nll=False)
                    if alone is not None:
                        part["nll_a"] = scores_of(alone[start:end], only_nll=True)["nll"]
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                _release_accelerator_memory(device)
                if on_batch_size is not None:
                    on_batch_size(batch_size)
                continue
            parts.append(part)
            start = end
            if on_progress is not None:
                on_progress(start)
    finally:
        model.train(was_training)
    columns = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    record_ids = [ex.record_id for ex in examples]
    _require_finite(columns["nll"], record_ids, "NLL^{A|Q}")
    if alone is not None:
        _require_finite(columns["nll_a"], record_ids, "NLL^A")
        zero = [rid for rid, v in zip(record_ids, columns["nll_a"].tolist(), strict=True) if v == 0]
        if zero:
            raise InvalidInput(f"NLL^A is 0, so IFD is undefined, for records: {zero}")
        columns["ifd"] = columns["nll"] / columns["nll_a"]
    n_response = [sum(y != IGNORE_INDEX for y in ex.labels[1:]) for ex in examples]
    return QualityScores(
        record_ids=record_ids,
        n_response_tokens=torch.tensor(n_response, dtype=torch.int64),
        nll=columns["nll"],
        perplexity=columns["perplexity"],
        el2n=columns["el2n"],
        u_entropy=columns["u_entropy"],
        u_confidence=columns["u_confidence"],
        u_margin=columns["u_margin"],
        u_min_margin=columns["u_min_margin"],
        nll_a=columns.get("nll_a"),
        ifd=columns.get("ifd"),
    )


def _require_finite(values: Tensor, record_ids: list[str], what: str) -> None:
    """A response token at probability 0 (or NaN logits) leaves no score to rank by."""
    bad = [
        rid for rid, ok in zip(record_ids, torch.isfinite(values).tolist(), strict=True) if not ok
    ]
    if bad:
        raise InvalidInput(f"{what} is not finite (a response token has probability 0): {bad}")


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _release_accelerator_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
