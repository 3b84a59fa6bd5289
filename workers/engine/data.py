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


@dataclass(frozen=True)
class SkippedExample:
    """An example left out of featurization, with the reason (reported, never silently lost)."""

    record_id: str
    reason: str


def format_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[str, str]:
    """Split an example into ``(prompt_text, response_text)``.

    The prompt is ``messages[:-1]`` rendered with the tokenizer's chat template and
    ``add_generation_prompt=True`` when it has one, else with ``DEFAULT_PROMPT_FORMAT``. The
    response is the last message's content followed by the EOS token, so the model also learns
    to stop (as LESS does).
    """
    if tokenizer.eos_token is None:
        raise InvalidInput("tokenizer has no EOS token to end the response with")
    history = list(example.messages[:-1])
    if tokenizer.chat_template is not None:
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise InvalidInput(f"chat template rendered {type(prompt).__name__}, not str")
    else:
        prompt = "".join(DEFAULT_PROMPT_FORMAT.format(**m) for m in history)
        prompt += DEFAULT_GENERATION_PROMPT
    response = example.messages[-1]["content"] + str(tokenizer.eos_token)
    return prompt, response


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
) -> tuple[list[TokenizedExample], list[SkippedExample]]:
    """Tokenize prompt and response separately, concatenate, cut to ``max_length`` from the right.

    Separate tokenization makes the prompt/response boundary exact. A chat template writes its
    own special tokens (HF convention), so its prompt is tokenized without adding any; the
    default format lets the tokenizer add its usual ones (e.g. BOS). Position 0 is never a
    target (nothing predicts it). An example left with no response token after truncation is
    returned in the second list with the reason.
    """
    if max_length < 2:
        raise InvalidInput(f"max_length must be >= 2, got {max_length}")
    kept: list[TokenizedExample] = []
    skipped: list[SkippedExample] = []
    template_adds_specials = tokenizer.chat_template is not None
    for example in examples:
        prompt, response = format_example(tokenizer, example)
        prompt_ids = tokenizer(prompt, add_special_tokens=not template_adds_specials)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        input_ids = list(prompt_ids) + list(response_ids)
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
        labels[0] = IGNORE_INDEX
        truncated = len(input_ids) > max_length
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
            )
        )
    return kept, skipped


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
