"""Score-set task (seed 003 toolbox): one scorer over a dataset → named per-record columns.

A score set's values, summary and histogram PNGs are written once at the end, the values blob
first and the row last: a worker killed mid-job leaves nothing half-written, and the
re-delivered task (``acks_late``) simply computes the set again. These scorers are one pass
over the dataset (no warmup, no checkpoints), so there is no intermediate state worth keeping.

A knn set also stores a dataset-level diversity report of the same embeddings (``report``).
A reward set scores each record's response with the engine's reward execution, exactly as NICE
scores a sampled response (``rewards.compute_rewards``): a failing unit test or a regex that
runs out of time scores 0, while a reward that cannot be computed at all (a judge that keeps
failing, a reward model that cannot be loaded) fails the job with the engine's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch
from celery import Task
from sqlalchemy import select

from service.blobs import BlobStore
from service.config import get_settings
from service.db.models import Record, ScoreSet
from service.db.models import RewardSpec as RewardSpecRow
from service.db.session import SessionLocal, for_writes, get_engine
from service.queue import celery_app
from workers.contracts import (
    IMPORTANCE_SCORERS,
    REPORT_N_CLUSTERS,
    SCORE_SET_RUN,
    ScoreSetSettings,
    ScoreSetTask,
    scorer_needs_model,
)
from workers.engine import (
    data,
    diversity,
    importance,
    plots,
    quality,
    rewards,
    summaries,
    text_stats,
)
from workers.engine.errors import EngineError
from workers.tasks.common import (
    embed_examples,
    example_of,
    load_registered_model,
    reward_spec_to_run,
    tenant_blobs,
)
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked

log = logging.getLogger(__name__)

Columns = dict[str, list[float | None]]


class ScoreSetContext:
    def __init__(self, score_set_id: str) -> None:
        with SessionLocal() as session:
            row = session.get(ScoreSet, score_set_id)
            if row is None:
                raise LookupError(score_set_id)
            session.info["tenant_id"] = row.tenant_id  # what it names must be its own
            self.score_set_id = score_set_id
            self.name: str | None = row.name
            self.scorer: str = row.scorer
            self.dataset_id: str = row.dataset_id
            self.probe_dataset_id: str | None = row.probe_dataset_id
            self.model_id: str | None = row.model_id
            self.settings = ScoreSetSettings.model_validate(row.settings)
            self.job = JobTracker(row.job_id)
            self.reward_spec_id: str | None = row.reward_spec_id
            self.tenant_id: str = row.tenant_id
        self.report: dict[str, Any] | None = None
        """knn: the dataset-level diversity report, set by ``compute_columns``."""
        self.blobs: BlobStore = tenant_blobs(self.tenant_id)
        self._model: tuple[Any, Any] | None = None

    def model(self) -> tuple[Any, Any]:
        """The scoring model and its tokenizer, loaded on first use (no LoRA: scores are of
        the model as registered)."""
        if self._model is None:
            self._model = load_registered_model(self.model_id, self.settings.dtype)
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
    x = embed_examples(
        everything,
        s.embedding,
        model_and_tokenizer=ctx.model,
        max_length=s.max_length,
        batch_size=s.batch_size,
    )
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


def _knn(ctx: ScoreSetContext, examples: list[data.Example]) -> Columns:
    """knn_distance per record, and the dataset-level report of the same embeddings."""
    x, _ = _embed(ctx, examples)
    s = ctx.settings
    ctx.job.stage("knn")
    column = {"knn_distance": _floats(diversity.knn_distance(x, s.k))}
    ctx.job.stage("diversity report")
    n_clusters = s.n_clusters or min(REPORT_N_CLUSTERS, len(examples))  # the API resolves it
    ctx.report = diversity.diversity_report(x, n_clusters=n_clusters, k=s.k, seed=s.seed).to_dict()
    return column


def reward_item(
    record_id: str, messages: Sequence[Mapping[str, str]], metadata: Mapping[str, Any]
) -> rewards.RewardItem:
    """A record as its reward sees it, the way NICE shows a sampled response: the last user
    message before the response as the prompt, the response, ``metadata.label`` (when a
    non-empty string, as the API requires) as the label, and the metadata (python_tests reads
    test and entry_point)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise EngineError(f"record {record_id!r} has no response to reward")
    users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    label = metadata.get("label")
    return rewards.RewardItem(
        probe_id=record_id,
        prompt=users[-1] if users else "",
        response=messages[-1]["content"],
        label=label if isinstance(label, str) and label else None,
        metadata=dict(metadata),
    )


def reward_column(
    spec: Mapping[str, Any], items: Sequence[rewards.RewardItem]
) -> list[float | None]:
    """R_i = r(Q_i, A_i) (seed 003 eq. 9) for each item, by ``rewards.compute_rewards``."""
    reward = rewards.reward_from_dict(spec)
    if reward.NEEDS_LABEL:  # the API checks this too; name the records, not "probes"
        lacking = [item.probe_id for item in items if item.label is None]
        if lacking:
            raise EngineError(
                f"{len(lacking)} records have no non-empty string metadata.label, which a "
                f"{reward.KIND!r} reward compares each response with: {lacking[:10]}"
            )
    outbound = get_settings().outbound_policy()  # SIFT_OUTBOUND_ALLOW, for an http_judge
    return [float(r) for r in rewards.compute_rewards(reward, items, outbound=outbound)]


def _reward(ctx: ScoreSetContext, examples: list[data.Example]) -> Columns:
    with SessionLocal() as session:
        row = session.get(RewardSpecRow, ctx.reward_spec_id) if ctx.reward_spec_id else None
        if row is None:  # the API requires one for this scorer
            raise EngineError(f"reward spec {ctx.reward_spec_id} no longer exists")
        spec = reward_spec_to_run(row)
        rows = session.execute(
            select(Record.record_id, Record.messages, Record.metadata_)
            .where(Record.dataset_id == ctx.dataset_id)
            .order_by(Record.position)
        ).all()
    if [r.record_id for r in rows] != [ex.record_id for ex in examples]:
        raise EngineError(f"the records of dataset {ctx.dataset_id} changed while being scored")
    items = [reward_item(r.record_id, r.messages, r.metadata_ or {}) for r in rows]
    ctx.job.stage(f"reward ({spec['kind']})", total=len(items))
    column = reward_column(spec, items)
    ctx.job.advance(len(items))
    return {"reward": column}


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
        return _knn(ctx, examples)
    if ctx.scorer in IMPORTANCE_SCORERS:
        return _importance(ctx, examples)
    if ctx.scorer == "reward":
        return _reward(ctx, examples)
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
    with SessionLocal(bind=for_writes(get_engine())) as session:
        row = session.get(ScoreSet, ctx.score_set_id, with_for_update=True, populate_existing=True)
        if row is None:  # deleted meanwhile: its values and plots must not stay behind
            ctx.blobs.delete_prefix(f"{prefix}/")
            raise ResourceDeleted(f"score set {ctx.score_set_id} was deleted")
        row.values_blob_key, row.summary, row.n_records = values_key, summary, len(examples)
        row.report = ctx.report
        session.commit()
    ctx.job.succeed()


@celery_app.task(name=SCORE_SET_RUN, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_task(self: Task, score_set_id: str) -> None:
    """A whole score set; re-delivered after a crash, it is computed again from the records."""
    try:
        ctx = ScoreSetContext(ScoreSetTask(score_set_id=score_set_id).score_set_id)
    except LookupError:
        log.warning("score set %s does not exist; dropping task", score_set_id)
        return
    run_tracked(ctx.job, lambda: run(ctx), task=self)


__all__ = ["compute_columns", "reward_column", "reward_item", "run_task"]
