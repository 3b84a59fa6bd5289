"""What every worker task shares: content keys, datasets as engine examples, feature-set rows.

Every expensive artifact is stored under a *content key* (a hash of everything that determines
it), so a re-delivered task, a restarted job or a second job on the same data finds what was
already computed and skips it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from service.blobs import BlobStore, TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Dataset, Model, Record
from service.db.models import FeatureSet as FeatureSetRow
from service.db.models import RewardSpec as RewardSpecRow
from service.db.session import SessionLocal
from service.secrets import unseal
from workers.contracts import SentenceTransformerEmbedding
from workers.engine import data, embeddings, lora, models
from workers.engine.errors import EngineError


def content_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of everything that determines an artifact."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def tenant_blobs(tenant_id: str) -> BlobStore:
    """The blob store as the job's tenant sees it (``service.blobs.TenantBlobStore``)."""
    return TenantBlobStore(blob_store_from_settings(get_settings()), tenant_id)


def reward_spec_to_run(row: RewardSpecRow) -> dict[str, Any]:
    """The reward spec a worker executes: the stored spec plus its sealed headers, opened
    here and nowhere else (they never reach a log, a note or the API)."""
    spec = dict(row.spec)
    if row.secret_headers:
        spec["headers"] = json.loads(unseal(row.secret_headers))
    return spec


def compute_device() -> torch.device:
    """The accelerator when there is one: production and the embedded default share code."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset's records as engine examples, in position order, with its content hash."""

    id: str
    content_hash: str
    examples: list[data.Example]


def records_in_order(dataset_id: str) -> Select[tuple[Record]]:
    """A dataset's records in position order (a select to run, offset or limit)."""
    return select(Record).where(Record.dataset_id == dataset_id).order_by(Record.position)


def load_dataset(dataset_id: str) -> LoadedDataset:
    with SessionLocal() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise EngineError(f"dataset {dataset_id} no longer exists")
        rows = session.scalars(records_in_order(dataset_id)).all()
        examples = [example_of(row) for row in rows]
        return LoadedDataset(dataset.id, dataset.content_hash, examples)


def example_of(row: Record) -> data.Example:
    return data.Example(
        record_id=row.record_id,
        messages=tuple({"role": m["role"], "content": m["content"]} for m in row.messages),
        subtask=row.subtask,
    )


def find_or_create_feature_set(key: str, **fields: Any) -> tuple[str, bool]:
    """The feature-set row with content ``key`` (created from ``fields`` if absent, a
    concurrent creator winning ties): its id and whether it is complete."""
    with SessionLocal() as session:
        row = session.scalar(select(FeatureSetRow).where(FeatureSetRow.content_key == key))
        if row is None:
            session.add(FeatureSetRow(content_key=key, status="building", **fields))
            try:
                session.commit()
            except IntegrityError:  # created concurrently by another valuation: use theirs
                session.rollback()
            row = session.scalar(select(FeatureSetRow).where(FeatureSetRow.content_key == key))
        if row is None:  # not ours, not theirs: its checkpoint or dataset was just deleted
            raise EngineError(f"feature set {key} could not be stored: its inputs were deleted")
        return row.id, row.status == "complete"


def shard_key(prefix: str, index: int) -> str:
    return f"{prefix}/shard-{index:05d}.safetensors"


def feature_key(
    provenance: dict[str, Any],
    dataset_hash: str,
    shard_size: int,
    adam_bias_correction: bool,
    policy: dict[str, Any] | None = None,
) -> str:
    """Content key of one feature set: identical records, checkpoint and projector → same key,
    whichever dataset upload they came from. Policy features also depend on the reward and
    the sampling settings (``policy``)."""
    return content_key(
        provenance=provenance,
        dataset=dataset_hash,
        shard_size=shard_size,
        adam_bias_correction=adam_bias_correction if provenance["kind"] == "adam" else None,
        policy=policy if provenance["kind"] == "policy" else None,
    )


_MODEL_CACHE: dict[tuple[Any, ...], tuple[Any, Any, str]] = {}
"""Not to be confused with ``SIFT_MODEL_CACHE_DIR``, the folder of converted GGUF models."""


def cached_model(source: str, dtype: str, lora_settings: lora.LoraSettings) -> tuple[Any, Any, str]:
    """The LoRA-wrapped model this worker process last loaded, if it is the one asked for.

    Safe to share between shard tasks: ``featurize`` loads the checkpoint's adapter into the
    model before every use. One model at a time (a 7B model fills a GPU).
    """
    key = (source, dtype, str(compute_device()), lora_settings)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        model, tokenizer = load_model(source, dtype)
        fingerprint = models.model_fingerprint(source, model)
        _MODEL_CACHE[key] = (lora.attach_lora(model, lora_settings), tokenizer, fingerprint)
    return _MODEL_CACHE[key]


def embed_examples(
    examples: Sequence[data.Example],
    embedding: str | SentenceTransformerEmbedding,
    *,
    model_and_tokenizer: Callable[[], tuple[Any, Any]],
    max_length: int,
    batch_size: int,
) -> torch.Tensor:
    """Record embeddings [N, H] in one space: the model's mean last hidden state ("lm"), TF-IDF
    of the text ("tfidf", one vocabulary for all of ``examples``), or a local
    sentence-transformers model. ``model_and_tokenizer`` is called only for "lm"."""
    if embedding == "lm":
        model, tokenizer = model_and_tokenizer()
        tokenized, skipped = data.tokenize_examples(tokenizer, examples, max_length)
        if skipped:
            raise EngineError(
                f"{len(skipped)} records cannot be embedded at max_length {max_length}: "
                + "; ".join(f"{x.record_id}: {x.reason}" for x in skipped[:5])
            )
        return embeddings.lm_mean_embeddings(
            model, tokenized, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id
        )
    texts = [embeddings.example_text(ex) for ex in examples]
    if isinstance(embedding, SentenceTransformerEmbedding):
        return embeddings.sentence_transformer_embeddings(texts, embedding.sentence_transformer)
    return embeddings.tfidf_embeddings(texts)


def load_registered_model(model_id: str | None, dtype: str) -> tuple[Any, Any]:
    """A registered model and its tokenizer as registered (no LoRA), on the compute device."""
    with SessionLocal() as session:
        row = session.get(Model, model_id) if model_id else None
        if row is None:
            raise EngineError(f"model {model_id} no longer exists")
        source = row.source
    return load_model(source, dtype)


def load_model(source: str, dtype: str) -> tuple[Any, Any]:
    """``models.load_model_and_tokenizer`` on the compute device, GGUF sources converted into
    (or read from) ``SIFT_MODEL_CACHE_DIR``."""
    return models.load_model_and_tokenizer(
        source,
        dtype=getattr(torch, dtype),
        device=compute_device(),
        model_cache_dir=get_settings().model_cache_dir,
    )
