"""Record embeddings: LM mean hidden state (batched vs one at a time, vs the model's own hidden
states), TF-IDF on a hand-worked corpus, and the optional sentence-transformers path."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch

from workers.engine.data import Example, TokenizedExample, tokenize_examples
from workers.engine.embeddings import (
    example_text,
    lm_mean_embeddings,
    sentence_transformer_embeddings,
    tfidf_embeddings,
)
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.lora import LoraSettings, attach_lora
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer

TEXTS = [
    ("Add 2 and 3.", "5"),
    ("Write a haiku about the sea and the wind over the water.", "Waves fold into foam"),
    ("Hi", "Hello! How can I help you today? Ask me anything at all."),
    ("Name a colour.", "Blue"),
    ("Translate 'chat' from French to English, please, with a short note.", "Cat."),
]


def _examples() -> list[Example]:
    return [
        Example(
            record_id=f"r{i}",
            messages=({"role": "user", "content": q}, {"role": "assistant", "content": a}),
        )
        for i, (q, a) in enumerate(TEXTS)
    ]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, list[TokenizedExample]]:
    model, tokenizer = load_model_and_tokenizer(TINY_LLAMA, seed=0)
    tokenized, skipped = tokenize_examples(tokenizer, _examples(), max_length=128)
    assert not skipped
    assert len({len(ex.input_ids) for ex in tokenized}) == len(tokenized)  # all lengths differ
    return model, tokenized


def test_lm_mean_batched_equals_one_at_a_time(tiny) -> None:  # type: ignore[no-untyped-def]
    model, examples = tiny
    single = torch.cat(
        [lm_mean_embeddings(model, [ex], batch_size=1, pad_token_id=0) for ex in examples]
    )
    for batch_size in (2, 3, 5):
        batched = lm_mean_embeddings(model, examples, batch_size=batch_size, pad_token_id=0)
        assert batched.shape == (len(examples), 64) and batched.dtype == torch.float32
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_lm_mean_is_the_mean_of_the_last_hidden_state(tiny) -> None:  # type: ignore[no-untyped-def]
    """Reference: the full causal LM, unpadded, its last entry of ``hidden_states``."""
    model, examples = tiny
    got = lm_mean_embeddings(model, examples, batch_size=4, pad_token_id=0)
    with torch.no_grad():
        for row, ex in zip(got, examples, strict=True):
            out = model(input_ids=torch.tensor([ex.input_ids]), output_hidden_states=True)
            torch.testing.assert_close(row, out.hidden_states[-1][0].mean(dim=0))


def test_lm_mean_through_lora_and_mode_restored(tiny) -> None:  # type: ignore[no-untyped-def]
    model, examples = tiny
    base = lm_mean_embeddings(model, examples, batch_size=2, pad_token_id=0)
    fresh, _ = load_model_and_tokenizer(TINY_LLAMA, seed=0)
    peft_model = attach_lora(fresh, LoraSettings(r=4, alpha=16.0, dropout=0.1), seed=0)
    peft_model.train()
    via_lora = lm_mean_embeddings(peft_model, examples, batch_size=2, pad_token_id=0)
    torch.testing.assert_close(via_lora, base)  # LoRA B starts at 0: same function
    assert peft_model.training


def test_lm_mean_progress_and_cancel(tiny) -> None:  # type: ignore[no-untyped-def]
    model, examples = tiny
    seen: list[int] = []
    lm_mean_embeddings(model, examples, batch_size=2, pad_token_id=0, on_progress=seen.append)
    assert seen == [2, 4, 5]
    with pytest.raises(Cancelled):
        lm_mean_embeddings(model, examples, batch_size=2, pad_token_id=0, should_stop=lambda: True)
    with pytest.raises(InvalidInput):
        lm_mean_embeddings(model, [], batch_size=2, pad_token_id=0)
    with pytest.raises(InvalidInput):
        lm_mean_embeddings(model, examples, batch_size=0, pad_token_id=0)


def test_tfidf_by_hand() -> None:
    # vocabulary (sorted): apple, banana, cherry; N = 3, df = 2, 2, 1;
    # smooth idf = ln((1 + N) / (1 + df)) + 1: a = b = ln(4/3) + 1 = 1.2877, c = ln 2 + 1 = 1.6931
    # doc 0: (a, b, 0) → (1/√2, 1/√2, 0); doc 2: (0, 2b, 0) → (0, 1, 0);
    # doc 1: (a, 0, c) / √(a² + c²) = (0.6053, 0, 0.7960)
    got = tfidf_embeddings(["apple banana", "Apple cherry", "banana banana"])
    a, c = math.log(4 / 3) + 1, math.log(2) + 1
    expected = torch.tensor(
        [
            [1 / math.sqrt(2), 1 / math.sqrt(2), 0.0],
            [a / math.hypot(a, c), 0.0, c / math.hypot(a, c)],
            [0.0, 1.0, 0.0],
        ]
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_tfidf_caps_vocabulary_and_refuses_empty_rows() -> None:
    # "the" (3 texts) and three of cat, sat, dog, ran (2 each): every text keeps a term
    capped = tfidf_embeddings(
        ["the cat sat", "the dog sat", "the cat ran", "a dog ran far"], max_features=4
    )
    assert capped.shape == (4, 4)
    torch.testing.assert_close(capped.norm(dim=1), torch.ones(4))
    # a cap this tight leaves the texts whose words are all rare with no term: refused
    with pytest.raises(InvalidInput, match="no term"):
        tfidf_embeddings([example_text(e) for e in _examples()], max_features=7)
    with pytest.raises(InvalidInput, match=r"indices \[1\]"):
        tfidf_embeddings(["apple pie", "? !", "apple tart"])
    with pytest.raises(InvalidInput):
        tfidf_embeddings(["a", "?"])  # no term at all
    with pytest.raises(InvalidInput):
        tfidf_embeddings([])
    with pytest.raises(InvalidInput):
        tfidf_embeddings("one string")


def test_example_text() -> None:
    example = _examples()[0]
    assert example_text(example) == "Add 2 and 3.\n\n5"
    assert example_text(example, roles=("user",)) == "Add 2 and 3."
    with pytest.raises(InvalidInput):
        example_text(example, roles=("narrator",))


def test_sentence_transformers_missing_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    with pytest.raises(InvalidInput, match="not installed"):
        sentence_transformer_embeddings(["x"], "/nonexistent")


def test_sentence_transformers_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stand-in module checks what is asked of the real one: a local model, unit rows."""
    calls: dict[str, object] = {}

    class FakeEncoder:
        def __init__(self, path: str, device: str | None, local_files_only: bool) -> None:
            calls.update(path=path, device=device, local_files_only=local_files_only)

        def encode(self, texts: list[str], **kwargs: object) -> torch.Tensor:
            calls.update(kwargs)
            return torch.ones(len(texts), 3, dtype=torch.float64) / math.sqrt(3)

    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = FakeEncoder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    got = sentence_transformer_embeddings(["a", "b"], tmp_path, batch_size=8)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    assert calls["path"] == str(tmp_path) and calls["local_files_only"] is True
    assert calls["normalize_embeddings"] is True and calls["batch_size"] == 8
    with pytest.raises(InvalidInput, match="local directory"):
        sentence_transformer_embeddings(["a"], tmp_path / "missing")


@pytest.mark.real_model
def test_minilm_embeddings_equal_plain_mean_pooling(minilm_folder: Path) -> None:
    """The real all-MiniLM-L6-v2 through sentence-transformers equals the model card's own
    recipe written with transformers alone: mean of the last hidden state over the attention
    mask, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    texts = [example_text(e) for e in _examples()]
    got = sentence_transformer_embeddings(texts, minilm_folder, batch_size=2)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder, local_files_only=True)
    model = AutoModel.from_pretrained(minilm_folder, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(mean, dim=1)
    assert got.shape == (len(texts), 384)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    similarity = got @ got.T
    assert torch.allclose(similarity.diagonal(), torch.ones(len(texts)), atol=1e-5)
