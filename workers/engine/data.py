"""Examples z = (x, y) -> token ids with the loss on the response y only.

The NTP loss of seed 002 §2, L(z; θ) = -P⁻¹ Σ_p log f(y^p | x, y^<p; θ), averages over the P
response tokens; prompt tokens are context, never targets. Here that is encoded in ``labels``:
``-100`` on prompt (and padding) positions, the token id on response positions. The shift by
one (logits at t predict token t+1) happens in ``gradients.response_nll``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from workers.engine.errors import InvalidInput

IGNORE_INDEX = -100
"""Label of positions that are not loss targets (the value ``torch.nn.functional.cross_entropy``
and HF models skip)."""

ROLES = frozenset({"system", "user", "assistant"})

DEFAULT_PROMPT_FORMAT = "<|{role}|>\n{content}\n"
"""Per-message layout for tokenizers without a chat template (as in LESS/open-instruct); the
prompt ends with ``<|assistant|>\\n`` and the response is the last message's content + EOS."""
DEFAULT_GENERATION_PROMPT = "<|assistant|>\n"


@dataclass(frozen=True)
class Example:
    """One conversation; the *last* message is the assistant response, the loss target."""

    record_id: str
    messages: tuple[dict[str, str], ...]
    subtask: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidInput(f"record {self.record_id!r}: no messages")
        for message in self.messages:
            if set(message) != {"role", "content"} or message["role"] not in ROLES:
                raise InvalidInput(
                    f"record {self.record_id!r}: each message needs exactly 'role' in "
                    f"{sorted(ROLES)} and 'content', got {message!r}"
                )
        if self.messages[-1]["role"] != "assistant":
            raise InvalidInput(
                f"record {self.record_id!r}: the last message must be the assistant response"
            )


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of prompt + response; ``labels`` is ``-100`` wherever no loss is taken."""

    record_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    subtask: str | None
    n_response_tokens: int
    truncated: bool
    response_tokens_cut: int = 0
    """Response tokens (EOS included) that ``max_length`` cut off: > 0 means the loss sees
    only the first ``n_response_tokens`` of the response."""


@dataclass(frozen=True)
class SkippedExample:
    """An example left out of featurization, with the reason (reported, never silently lost)."""

    record_id: str
    reason: str


SYSTEM_PROMPT_DROP = ""
"""``system_prompt`` value meaning: no system turn at all, not even the chat template's
default (SmolLM2's template adds a 21-token one to every conversation without its own)."""
_SENTINEL = "\x1fsift-system-prompt\x1f"


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    history: Sequence[dict[str, str]],
    system_prompt: str | None = None,
) -> str:
    """The prompt text of ``history`` (the messages before the response), generation prompt
    included: the tokenizer's chat template when it has one, else ``DEFAULT_PROMPT_FORMAT``.

    ``system_prompt``: ``None`` renders the conversation as it is (a template may add its own
    default system prompt); a text is the system message of a conversation that has none (a
    record's own system message always wins); ``SYSTEM_PROMPT_DROP`` (``""``) renders a
    conversation without one with no system turn at all. Dropping renders the conversation
    behind a placeholder system message and cuts that message's turn out: the turn is
    ``template([placeholder])`` less the BOS token when the template writes ``bos_token``;
    a template whose output does not split that way is an ``InvalidInput``.
    """
    history = list(history)
    has_system = bool(history) and history[0]["role"] == "system"
    if system_prompt and not has_system:
        history = [{"role": "system", "content": system_prompt}, *history]
    if tokenizer.chat_template is None:
        prompt = "".join(DEFAULT_PROMPT_FORMAT.format(**m) for m in history)
        return prompt + DEFAULT_GENERATION_PROMPT
    if system_prompt == SYSTEM_PROMPT_DROP and not has_system:
        return _without_system_turn(tokenizer, history)
    return _apply_template(tokenizer, history, add_generation_prompt=True)


def _apply_template(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise InvalidInput(f"chat template rendered {type(text).__name__}, not str")
    return text


def _without_system_turn(tokenizer: PreTrainedTokenizerBase, history: list[dict[str, str]]) -> str:
    placeholder = [{"role": "system", "content": _SENTINEL}]
    turn = _apply_template(tokenizer, placeholder, add_generation_prompt=False)
    full = _apply_template(tokenizer, placeholder + history, add_generation_prompt=True)
    bos = tokenizer.bos_token
    template = str(tokenizer.chat_template)
    prefix = str(bos) if bos and "bos_token" in template and turn.startswith(str(bos)) else ""
    if not full.startswith(turn) or _SENTINEL not in turn[len(prefix) :]:
        raise InvalidInput(
            "this tokenizer's chat template does not render a system message as a separate "
            "turn, so its system prompt cannot be dropped; set system_prompt to a text instead"
        )
    return prefix + full[len(turn) :]


def format_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, system_prompt: str | None = None
) -> tuple[str, str]:
    """Split an example into ``(prompt_text, response_text)``.

    The prompt is ``messages[:-1]`` rendered by ``render_prompt`` (the tokenizer's chat
    template with ``add_generation_prompt=True`` when it has one, else
    ``DEFAULT_PROMPT_FORMAT``; ``system_prompt`` as there). The response is the last message's
    content followed by the EOS token, so the model also learns to stop (as LESS does).
    """
    if tokenizer.eos_token is None:
        raise InvalidInput("tokenizer has no EOS token to end the response with")
    prompt = render_prompt(tokenizer, example.messages[:-1], system_prompt)
    response = example.messages[-1]["content"] + str(tokenizer.eos_token)
    return prompt, response


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    *,
    system_prompt: str | None = None,
) -> tuple[list[TokenizedExample], list[SkippedExample]]:
    """Tokenize prompt and response separately, concatenate, cut to ``max_length`` from the right.

    Separate tokenization makes the prompt/response boundary exact. A chat template writes its
    own special tokens (HF convention), so its prompt is tokenized without adding any; the
    default format lets the tokenizer add its usual ones (e.g. BOS). Position 0 is never a
    target (nothing predicts it). An example left with no response token after truncation is
    returned in the second list with the reason; one whose response was cut part-way is kept
    with ``response_tokens_cut`` > 0 (``truncated_responses`` lists them). ``system_prompt``:
    see ``render_prompt``.
    """
    if max_length < 2:
        raise InvalidInput(f"max_length must be >= 2, got {max_length}")
    kept: list[TokenizedExample] = []
    skipped: list[SkippedExample] = []
    template_adds_specials = tokenizer.chat_template is not None
    for example in examples:
        prompt, response = format_example(tokenizer, example, system_prompt)
        prompt_ids = tokenizer(prompt, add_special_tokens=not template_adds_specials)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        input_ids = list(prompt_ids) + list(response_ids)
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
        labels[0] = IGNORE_INDEX
        n_cut = max(0, len(input_ids) - max_length)
        truncated = n_cut > 0
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        n_response = sum(label != IGNORE_INDEX for label in labels)
        if n_response == 0:
            skipped.append(
                SkippedExample(
                    example.record_id,
                    f"no response token left: prompt has {len(prompt_ids)} tokens, response "
                    f"{len(response_ids)}, max_length is {max_length}",
                )
            )
            continue
        kept.append(
            TokenizedExample(
                record_id=example.record_id,
                input_ids=tuple(input_ids),
                labels=tuple(labels),
                subtask=example.subtask,
                n_response_tokens=n_response,
                truncated=truncated,
                response_tokens_cut=n_cut,
            )
        )
    return kept, skipped


@dataclass(frozen=True)
class TruncatedResponse:
    """A record kept for featurization whose response ``max_length`` cut part-way."""

    record_id: str
    response_tokens: int
    response_tokens_kept: int


def truncated_responses(tokenized: Sequence[TokenizedExample]) -> list[TruncatedResponse]:
    """The examples whose response lost tokens to ``max_length`` (wholly cut ones are skipped
    by ``tokenize_examples`` and reported there)."""
    return [
        TruncatedResponse(
            ex.record_id, ex.n_response_tokens + ex.response_tokens_cut, ex.n_response_tokens
        )
        for ex in tokenized
        if ex.response_tokens_cut > 0
    ]


def collate(batch: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad to the longest example: ``input_ids``, ``attention_mask``, ``labels`` [B, T].

    Padding gets ``attention_mask`` 0 and label ``-100``; with right padding and causal
    attention the real tokens never attend to it.
    """
    if not batch:
        raise InvalidInput("cannot collate an empty batch")
    length = max(len(ex.input_ids) for ex in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
