"""Record embeddings g(x) [N, H] for the diversity measures of seed 003 §4 (``diversity``).

Three ways, all returning a float32 CPU tensor, row i for record i:
  ``sentence_transformer_embeddings``  a sentence encoder with pooling on its final outputs,
      the seed's choice (Reimers & Gurevych 2019), loaded from a local directory; needs the
      optional package ``sentence-transformers`` (imported only here), rows L2-normalised.
  ``lm_mean_embeddings``  the causal LM's own view of the record: the mean of the last hidden
      state h_L over the T_i real tokens of the tokenized conversation,
          g(x_i) = T_i⁻¹ Σ_t m_it h_L(x_i)_t,    m the attention mask (1 on tokens, 0 on padding).
      Batches are right-padded (``data.collate``); with causal attention a real token never
      attends to padding, so a row does not depend on what it is batched with (tests hold
      batched equal to one-at-a-time). Examples are sorted by length before batching to
      waste little compute on padding; rows come back in input order.
  ``tfidf_embeddings``  TF-IDF (Sparck Jones 1972) with scikit-learn's ``TfidfVectorizer``:
      w_it = tf_it · (ln((1 + N) / (1 + df_t)) + 1), rows L2-normalised, densified over the
      ``max_features`` most frequent terms (memory N × max_features × 4 bytes). A text with no
      vocabulary term would be a zero vector, which no cosine can compare: refused, by index.

``example_text`` gives the text a sentence encoder or TF-IDF sees for an ``data.Example``.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel

from workers.engine.data import ROLES, Example, TokenizedExample, collate
from workers.engine.errors import Cancelled, InvalidInput


def example_text(
    example: Example, *, roles: Sequence[str] = ("system", "user", "assistant")
) -> str:
    """The contents of the messages with one of ``roles``, in order, one per paragraph
    (``roles=("user",)`` embeds the instructions only)."""
    unknown = set(roles) - ROLES
    if unknown or not roles:
        raise InvalidInput(f"roles must be a non-empty subset of {sorted(ROLES)}, got {roles!r}")
    return "\n\n".join(m["content"] for m in example.messages if m["role"] in roles)


def sentence_transformer_embeddings(
    texts: Sequence[str],
    model_path: str | Path,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unit-norm sentence embeddings [N, H] from the sentence-transformers model saved in the
    local directory ``model_path`` (no hub download is attempted)."""
    texts = _texts(texts)
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    try:
        module = importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise InvalidInput(
            "sentence-transformers is not installed in this worker; install it, or embed with "
            "the language model ('lm_mean') or TF-IDF instead"
        ) from exc
    path = Path(model_path)
    if not path.is_dir():
        raise InvalidInput(f"sentence-transformers model must be a local directory: {path}")
    model = module.SentenceTransformer(
        str(path), device=str(device) if device is not None else None, local_files_only=True
    )
    embeddings = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return torch.as_tensor(embeddings).to(device="cpu", dtype=torch.float32)


def lm_mean_embeddings(
    model: PreTrainedModel | PeftModel,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Mean last hidden state over the non-padding tokens [N, H] (module docstring).

    Runs the model's decoder stack (``get_decoder()``: no LM head, no [B, T, V] logits) in
    eval mode without gradients, on the model's device; the model's mode is restored.
    ``batch_size`` is an upper bound: a batch that runs out of accelerator memory is retried at
    half the size. ``on_progress`` gets the number of examples done; ``should_stop`` returning
    True raises ``Cancelled``.
    """
    if not examples:
        raise InvalidInput("no examples to embed")
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    rows: list[Tensor | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(order):
            if should_stop is not None and should_stop():
                raise Cancelled(f"embedding cancelled after {start} of {len(order)}")
            chunk = order[start : start + batch_size]
            batch = collate([examples[i] for i in chunk], pad_token_id)
            try:
                pooled = _mean_last_hidden(decoder, batch, device)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for i, row in zip(chunk, pooled.cpu(), strict=True):
                rows[i] = row
            start += len(chunk)
            if on_progress is not None:
                on_progress(start)
    finally:
        model.train(was_training)
    return torch.stack([r for r in rows if r is not None])


def _mean_last_hidden(
    decoder: torch.nn.Module, batch: dict[str, Tensor], device: torch.device
) -> Tensor:
    """T_i⁻¹ Σ_t m_it h_L[i, t] [B, H] in float32."""
    input_ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    with torch.inference_mode():
        out = decoder(input_ids=input_ids, attention_mask=mask)
    hidden = getattr(out, "last_hidden_state", None)
    if not isinstance(hidden, Tensor) or hidden.shape[:2] != input_ids.shape:
        raise InvalidInput(
            f"{type(decoder).__name__} returned no last_hidden_state [B, T, H]; this model's "
            "decoder stack cannot be found by get_decoder()"
        )
    weights = mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
    return (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1)


def tfidf_embeddings(
    texts: Sequence[str],
    *,
    max_features: int | None = 4096,
    ngram_range: tuple[int, int] = (1, 1),
    min_df: int = 1,
    sublinear_tf: bool = False,
) -> Tensor:
    """L2-normalised TF-IDF rows [N, V] (V ≤ ``max_features``) over the vocabulary of ``texts``.

    Parameters are ``TfidfVectorizer``'s (default tokenisation: lowercase words of ≥ 2
    characters). ``sublinear_tf`` replaces tf with 1 + ln(tf).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer  # worker dependency

    texts = _texts(texts)
    if max_features is not None and max_features < 1:
        raise InvalidInput(f"max_features must be >= 1 or None, got {max_features}")
    if min_df < 1 or not 1 <= ngram_range[0] <= ngram_range[1]:
        raise InvalidInput(f"need min_df >= 1 and 1 <= n_min <= n_max, got {min_df}, {ngram_range}")
    vectorizer = TfidfVectorizer(
        max_features=max_features,
        ngram_range=ngram_range,
        min_df=min_df,
        sublinear_tf=sublinear_tf,
        norm="l2",
        dtype=np.float32,
    )
    try:
        matrix = vectorizer.fit_transform(list(texts))
    except ValueError as exc:  # "empty vocabulary": no text has a single term
        raise InvalidInput(f"TF-IDF found no terms in the texts: {exc}") from exc
    dense = torch.from_numpy(matrix.toarray()).to(torch.float32)
    empty = (dense.abs().sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise InvalidInput(
            f"{len(empty)} texts have no term in the TF-IDF vocabulary (empty, too short, or "
            f"only terms cut by max_features/min_df), indices {empty[:10]}"
        )
    return dense


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInput("texts must be a sequence of strings, not one string")
    out = list(texts)
    if not out:
        raise InvalidInput("no texts to embed")
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InvalidInput(f"texts must be strings; not at indices {bad[:10]}")
    return out
