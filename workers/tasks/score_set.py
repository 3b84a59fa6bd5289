"""Score-set task (seed 003 toolbox): one scorer over a dataset → named per-record columns.

A score set's values, summary and histogram PNGs are written once at the end, the values blob
first and the row last: a worker killed mid-job leaves nothing half-written, and the
re-delivered task (``acks_late``) simply computes the set again. These scorers are one pass
over the dataset (no warmup, no checkpoints), so there is no intermediate state worth keeping.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
from sqlalchemy import select

from service.blobs import BlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Model, Record, ScoreSet
from service.db.session import SessionLocal
from service.queue import celery_app
from workers.contracts import (
    IMPORTANCE_SCORERS,
    SCORE_SET_RUN,
    ScoreSetSettings,
    ScoreSetTask,
    SentenceTransformerEmbedding,
    scorer_needs_model,
)
from workers.engine import (
    data,
    diversity,
    embeddings,
    importance,
    models,
    plots,
    quality,
    summaries,
    text_stats,
)
from workers.engine.errors import EngineError
from workers.tasks.common import compute_device, example_of
from workers.tasks.jobs import JobTracker, run_tracked

log = logging.getLogger(__name__)

Columns = dict[str, list[float | None]]


class ScoreSetContext:
    def __init__(self, score_set_id: str) -> None:
        with SessionLocal() as session:
            row = session.get(ScoreSet, score_set_id)
            if row is None:
                raise LookupError(score_set_id)
            self.score_set_id = score_set_id
            self.name: str | None = row.name
            self.scorer: str = row.scorer
            self.dataset_id: str = row.dataset_id
            self.probe_dataset_id: str | None = row.probe_dataset_id
            self.model_id: str | None = row.model_id
            self.settings = ScoreSetSettings.model_validate(row.settings)
            self.job = JobTracker(row.job_id)
        self.blobs: BlobStore = blob_store_from_settings(get_settings())
        self._model: tuple[Any, Any] | None = None

    def model(self) -> tuple[Any, Any]:
        """The scoring model and its tokenizer, loaded on first use (no LoRA: scores are of
        the model as registered)."""
        if self._model is None:
            with SessionLocal() as session:
                row = session.get(Model, self.model_id) if self.model_id else None
                if row is None:
                    raise EngineError(f"model {self.model_id} no longer exists")
                source = row.source
            self._model = models.load_model_and_tokenizer(
                source, dtype=getattr(torch, self.settings.dtype), device=compute_device()
            )
        return self._model


def _examples(dataset_id: str) -> list[data.Example]:
    """Every record in position order, prompt-only ones included (text scorers take them)."""
    with SessionLocal() as session:
        rows = session.scalars(
            select(Record).where(Record.dataset_id == dataset_id).order_by(Record.position)
        ).all()
        if not rows:
            raise EngineError(f"dataset {dataset_id} has no records (or no longer exists)")
        return [example_of(row) for row in rows]


def _floats(values: torch.Tensor) -> list[float | None]:
    return [float(v) for v in values.double().tolist()]


def _tokenized(
    ctx: ScoreSetContext, examples: list[data.Example]
) -> tuple[list[data.TokenizedExample], list[int]]:
    """Tokenized examples that keep a response token, and their positions in ``examples``;
    the others are noted on the job and get no score (None)."""
    _, tokenizer = ctx.model()
    tokenized, skipped = data.tokenize_examples(tokenizer, examples, ctx.settings.max_length)
    if skipped:
        shown = "; ".join(f"{s.record_id}: {s.reason}" for s in skipped[:5])
        ctx.job.note(f"{len(skipped)} records get no model score ({shown})")
    position = {ex.record_id: i for i, ex in enumerate(examples)}
    return tokenized, [position[t.record_id] for t in tokenized]


def _spread(n: int, positions: list[int], columns: Columns) -> Columns:
    """Columns over a subset (``positions``) placed into n slots, None elsewhere."""
    out: Columns = {}
    for name, values in columns.items():
        full: list[float | None] = [None] * n
        for i, v in zip(positions, values, strict=True):
            full[i] = v
        out[name] = full
    return out


def _quality(ctx: ScoreSetContext, examples: list[data.Example]) -> Columns:
    model, tokenizer = ctx.model()
    tokenized, positions = _tokenized(ctx, examples)
    prefix = quality.response_only_prefix(tokenizer) if ctx.settings.ifd else None
    ctx.job.stage("quality", total=len(tokenized))
    scores = quality.quality_scores(
        model,
        tokenized,
        batch_size=ctx.settings.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        response_prefix=prefix,
        should_stop=ctx.job.cancel_requested,
    )
    ctx.job.advance(len(tokenized))
    columns = {
        name: _floats(value)
        for name, value in scores.columns().items()
        if name != "n_response_tokens"
    }
    return _spread(len(examples), positions, columns)


def _text(examples: list[data.Example]) -> Columns:
    stats = text_stats.example_text_stats(examples)
    names = [f.name for f in fields(text_stats.TextStats)]
    return {name: [_optional(getattr(s, name)) for s in stats] for name in names}


def _optional(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _embed(
    ctx: ScoreSetContext, examples: list[data.Example], extra: Sequence[data.Example] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of ``examples`` and of ``extra`` (probes), in one space: one TF-IDF
    vocabulary or one model for both."""
    everything = [*examples, *extra]
    s = ctx.settings
    ctx.job.stage("embeddings", total=len(everything))
    if s.embedding == "lm":
        model, tokenizer = ctx.model()
        tokenized, skipped = data.tokenize_examples(tokenizer, everything, s.max_length)
        if skipped:  # a prompt-only probe still has a prompt to embed
            raise EngineError(
                f"{len(skipped)} records cannot be embedded at max_length {s.max_length}: "
                + "; ".join(f"{x.record_id}: {x.reason}" for x in skipped[:5])
            )
        x = embeddings.lm_mean_embeddings(
            model, tokenized, batch_size=s.batch_size, pad_token_id=tokenizer.pad_token_id
        )
    else:
        texts = [embeddings.example_text(ex) for ex in everything]
        if isinstance(s.embedding, SentenceTransformerEmbedding):
            x = embeddings.sentence_transformer_embeddings(texts, s.embedding.sentence_transformer)
        else:
            x = embeddings.tfidf_embeddings(texts)
    ctx.job.advance(len(everything))
    return x[: len(examples)], x[len(examples) :]


def _importance(ctx: ScoreSetContext, examples: list[data.Example]) -> Columns:
    assert ctx.probe_dataset_id is not None  # the API requires probes for these scorers
    probes = _examples(ctx.probe_dataset_id)
    probe_subtasks = [p.subtask for p in probes]
    s = ctx.settings
    ctx.job.stage(ctx.scorer, total=len(examples))
    if ctx.scorer == "random":
        scores, per_subtask = importance.random_scores(
            [ex.record_id for ex in examples], seed=s.seed, probe_subtasks=probe_subtasks
        )
    elif ctx.scorer == "rds":
        pool_x, probe_x = _embed(ctx, examples, probes)
        scores, per_subtask = importance.rds_scores(pool_x, probe_x, probe_subtasks)
    else:
        pool_texts = [importance.example_text(ex) for ex in examples]
        probe_texts = [importance.example_text(p) for p in probes]
        if ctx.scorer == "bm25":
            scores, per_subtask = importance.bm25_scores(
                pool_texts, probe_texts, probe_subtasks, k1=s.bm25_k1, b=s.bm25_b
            )
        else:
            scores, per_subtask = importance.dsir_scores(
                pool_texts,
                probe_texts,
                probe_subtasks,
                num_buckets=s.dsir_buckets,
                alpha=s.dsir_smoothing,
            )
    ctx.job.advance(len(examples))
    columns: Columns = {"score": _floats(scores)}
    for subtask, values in sorted(per_subtask.items()):
        columns[f"subtask:{subtask}"] = _floats(values)
    return columns


def compute_columns(ctx: ScoreSetContext, examples: list[data.Example]) -> Columns:
    """The scorer's columns, each aligned with ``examples``."""
    if ctx.scorer == "quality":
        return _quality(ctx, examples)
    if ctx.scorer == "text":
        ctx.job.stage("text", total=len(examples))
        columns = _text(examples)
        ctx.job.advance(len(examples))
        return columns
    if ctx.scorer == "knn":
        x, _ = _embed(ctx, examples)
        ctx.job.stage("knn")
        return {"knn_distance": _floats(diversity.knn_distance(x, ctx.settings.k))}
    if ctx.scorer in IMPORTANCE_SCORERS:
        return _importance(ctx, examples)
    raise EngineError(f"unknown scorer {ctx.scorer!r}")


def run(ctx: ScoreSetContext) -> None:
    if scorer_needs_model(ctx.scorer, ctx.settings) and ctx.model_id is None:
        raise EngineError(f"scorer {ctx.scorer!r} needs a model")
    ctx.job.stage("load records")
    examples = _examples(ctx.dataset_id)
    columns = compute_columns(ctx, examples)
    ctx.job.stage("summary")
    prefix = f"score_sets/{ctx.score_set_id}"
    values_key = f"{prefix}/values.json"
    payload = {"record_ids": [ex.record_id for ex in examples], "columns": columns}
    ctx.blobs.put_bytes(values_key, json.dumps(payload, separators=(",", ":")).encode())
    summary: dict[str, Any] = {}
    for name, values in columns.items():
        column = summaries.column_summary(values)
        plot_key = f"{prefix}/hist-{name.replace(':', '_')}.png"
        figure = plots.histogram_figure(column, column=name, title=ctx.name)
        ctx.blobs.put_bytes(plot_key, plots.render(figure, "png"))
        summary[name] = column | {"plot_blob_key": plot_key}
    with SessionLocal() as session:
        row = session.get(ScoreSet, ctx.score_set_id)
        if row is None:
            raise EngineError(f"score set {ctx.score_set_id} no longer exists")
        row.values_blob_key, row.summary, row.n_records = values_key, summary, len(examples)
        session.commit()
    ctx.job.succeed()


@celery_app.task(name=SCORE_SET_RUN, acks_late=True, reject_on_worker_lost=True)
def run_task(score_set_id: str) -> None:
    """A whole score set; re-delivered after a crash, it is computed again from the records."""
    try:
        ctx = ScoreSetContext(ScoreSetTask(score_set_id=score_set_id).score_set_id)
    except LookupError:
        log.warning("score set %s does not exist; dropping task", score_set_id)
        return
    run_tracked(ctx.job, lambda: run(ctx))


__all__ = ["compute_columns", "run_task"]
