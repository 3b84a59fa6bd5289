from __future__ import annotations

import pytest
import torch

from workers.engine.errors import InvalidInput
from workers.engine.models import (
    TINY_LLAMA,
    build_byte_tokenizer,
    build_tiny_llama,
    load_model_and_tokenizer,
    model_fingerprint,
)


def test_tiny_llama_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = build_tiny_llama(0), build_tiny_llama(0), build_tiny_llama(1)
    assert torch.equal(torch.rand(3), expected_next)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    assert a.config.num_key_value_heads == 2 and a.config.vocab_size == len(build_byte_tokenizer())


def test_byte_tokenizer_round_trip_and_chat_template() -> None:
    tokenizer = build_byte_tokenizer()
    text = "héllo 3+4=7 </s>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len("héllo 3+4=7 ".encode()) + 1
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<s><|user|>\nHi\n<|assistant|>\n"


def test_load_builtin_and_fingerprint() -> None:
    model, tokenizer = load_model_and_tokenizer(TINY_LLAMA, dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert tokenizer.pad_token_id == 0
    fp = model_fingerprint(TINY_LLAMA, model)
    assert fp.startswith(TINY_LLAMA + "@") and fp.endswith("#seed=0")
    other, _ = load_model_and_tokenizer(TINY_LLAMA, seed=1)
    assert model_fingerprint(TINY_LLAMA, other) != fp


def test_unknown_builtin_raises() -> None:
    with pytest.raises(InvalidInput, match="unknown builtin"):
        load_model_and_tokenizer("builtin:gpt-17")
