from __future__ import annotations

import pytest

from workers.engine.data import (
    IGNORE_INDEX,
    SYSTEM_PROMPT_DROP,
    Example,
    TruncatedResponse,
    collate,
    format_example,
    render_prompt,
    tokenize_examples,
    truncated_responses,
)
from workers.engine.errors import InvalidInput
from workers.engine.models import build_byte_tokenizer


def _example(prompt: str, answer: str, record_id: str = "r1") -> Example:
    return Example(
        record_id,
        ({"role": "user", "content": prompt}, {"role": "assistant", "content": answer}),
    )


def test_labels_cover_exactly_the_response_and_eos() -> None:
    tokenizer = build_byte_tokenizer()
    [tok], skipped = tokenize_examples(tokenizer, [_example("What is 3+4?", "7")], 64)
    assert skipped == []
    prompt, response = format_example(tokenizer, _example("What is 3+4?", "7"))
    assert prompt == "<s><|user|>\nWhat is 3+4?\n<|assistant|>\n"
    assert response == "7</s>"
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tok.labels[:n_prompt] == (IGNORE_INDEX,) * n_prompt
    assert tok.labels[n_prompt:] == tok.input_ids[n_prompt:]
    assert tokenizer.decode(list(tok.input_ids[n_prompt:])) == "7</s>"
    assert tok.n_response_tokens == 2 and not tok.truncated


def test_default_format_without_chat_template() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = None
    example = Example(
        "r",
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ),
    )
    prompt, response = format_example(tokenizer, example)
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert response == "Hello</s>"


def test_truncation_keeps_partial_response_and_skips_fully_truncated() -> None:
    tokenizer = build_byte_tokenizer()
    long_answer = _example("Hi", "x" * 100, "partial")
    long_prompt = _example("y" * 100, "ok", "gone")
    kept, skipped = tokenize_examples(tokenizer, [long_answer, long_prompt], 32)
    assert [k.record_id for k in kept] == ["partial"]
    assert len(kept[0].input_ids) == 32 and kept[0].truncated
    assert kept[0].n_response_tokens == sum(label != IGNORE_INDEX for label in kept[0].labels)
    assert [s.record_id for s in skipped] == ["gone"]
    assert "no response token" in skipped[0].reason and "32" in skipped[0].reason
    # byte tokenizer: "<s><|user|>\nHi\n<|assistant|>\n" is 1 + 26 tokens, "x"*100 + EOS 101
    assert kept[0].n_response_tokens == 32 - 27 and kept[0].response_tokens_cut == 101 - 5
    assert truncated_responses(kept) == [TruncatedResponse("partial", 101, 5)]


def test_response_cut_counts_exactly_at_the_boundary() -> None:
    tokenizer = build_byte_tokenizer()
    record = _example("Hi", "abcdef", "r")  # 27 prompt tokens + 7 response tokens = 34
    for max_length, cut in ((34, 0), (40, 0), (33, 1), (28, 6)):
        [tok], _ = tokenize_examples(tokenizer, [record], max_length)
        assert tok.response_tokens_cut == cut and tok.truncated == (cut > 0), max_length
        assert tok.n_response_tokens == 7 - cut
        assert truncated_responses([tok]) == ([TruncatedResponse("r", 7, 7 - cut)] if cut else [])


def test_system_prompt_set_or_dropped_with_a_template() -> None:
    tokenizer = build_byte_tokenizer()  # its template has no default system prompt
    history = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tokenizer, history) == "<s><|user|>\nHi\n<|assistant|>\n"
    assert (
        render_prompt(tokenizer, history, "Be brief.")
        == "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    )
    own = [{"role": "system", "content": "Mine."}, *history]
    assert render_prompt(tokenizer, own, "Be brief.") == render_prompt(tokenizer, own)
    assert render_prompt(tokenizer, own, SYSTEM_PROMPT_DROP) == render_prompt(tokenizer, own)
    # a template that adds a default system turn (like SmolLM2's ChatML one) loses it
    tokenizer.chat_template = (
        "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>\nDefault.\n"
        "{% endif %}" + tokenizer.chat_template.removeprefix("{{ bos_token }}")
    )
    assert render_prompt(tokenizer, history).startswith("<s><|system|>\nDefault.\n<|user|>")
    assert render_prompt(tokenizer, history, "") == "<s><|user|>\nHi\n<|assistant|>\n"
    assert (
        render_prompt(tokenizer, history, "Be brief.")
        == "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    )
    kept, _ = tokenize_examples(tokenizer, [_example("Hi", "ok")], 64, system_prompt="")
    assert kept[0].input_ids[0] == tokenizer.bos_token_id
    assert len(kept[0].input_ids) == 1 + len("<|user|>\nHi\n<|assistant|>\n") + 3


def test_system_prompt_without_a_template_and_undroppable_templates() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = None
    history = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tokenizer, history, "") == "<|user|>\nHi\n<|assistant|>\n"
    assert render_prompt(tokenizer, history, "S") == "<|system|>\nS\n<|user|>\nHi\n<|assistant|>\n"
    tokenizer.chat_template = (  # folds the system message into every user turn (Llama-2 style)
        "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else 'D' %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ sys }} "
        "{{ m['content'] }}\n{% endif %}{% endfor %}"
    )
    with pytest.raises(InvalidInput, match="cannot be dropped"):
        render_prompt(tokenizer, history, SYSTEM_PROMPT_DROP)


def test_collate_pads_right_with_masks() -> None:
    tokenizer = build_byte_tokenizer()
    kept, _ = tokenize_examples(
        tokenizer, [_example("a", "b", "1"), _example("abcd", "ef", "2")], 64
    )
    batch = collate(kept, pad_token_id=0)
    n0, n1 = len(kept[0].input_ids), len(kept[1].input_ids)
    assert batch["input_ids"].shape == (2, n1)
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (n1 - n0)
    assert batch["labels"][0, n0:].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][0, n0:].eq(0).all()


@pytest.mark.parametrize(
    "messages",
    [
        (),
        ({"role": "user", "content": "no answer"},),
        ({"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}),
        ({"role": "user"}, {"role": "assistant", "content": "y"}),
    ],
)
def test_invalid_examples_raise(messages: tuple[dict[str, str], ...]) -> None:
    with pytest.raises(InvalidInput):
        Example("bad", messages)


def test_collate_empty_raises() -> None:
    with pytest.raises(InvalidInput):
        collate([], pad_token_id=0)
