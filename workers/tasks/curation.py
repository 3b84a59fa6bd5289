"""Curation task: filter a dataset by score sets, then rank or pick, under quotas.

The recipe was validated by the API (score sets succeeded, on this dataset, columns exist); the
worker reads the score sets' stored values, aligns them by record id, and runs
``workers.engine.curation``. The result is written once, at the end: a killed worker leaves
nothing half-written and the re-delivered task computes the same selection again (every pick
is deterministic for its seed).
"""

from __future__ import annotations

import json
import logging
import math
from fractions import Fraction
from typing import Any

from celery import Task
from pydantic import TypeAdapter
from sqlalchemy import select

from service.blobs import BlobStore
from service.db.models import Curation, Record, ScoreSet
from service.db.session import SessionLocal
from service.queue import celery_app
from workers.contracts import (
    CURATION_RUN,
    EMBEDDING_PICKS,
    CurationSettings,
    CurationTask,
    Pick,
    Quota,
    ScoreFilter,
    ScoreRef,
)
from workers.engine import curation, data
from workers.engine.errors import EngineError
from workers.tasks.common import (
    embed_examples,
    example_of,
    load_registered_model,
    tenant_blobs,
)
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked

log = logging.getLogger(__name__)


class CurationContext:
    def __init__(self, curation_id: str) -> None:
        with SessionLocal() as session:
            row = session.get(Curation, curation_id)
            if row is None:
                raise LookupError(curation_id)
            self.curation_id = curation_id
            self.dataset_id: str = row.dataset_id
            self.model_id: str | None = row.model_id
            recipe = dict(row.recipe)
            self.job = JobTracker(row.job_id)
            self.tenant_id: str = row.tenant_id
        self.filters = [ScoreFilter.model_validate(f) for f in recipe.get("filters", [])]
        self.pick: Any = TypeAdapter(Pick).validate_python(recipe["pick"])
        self.budget: int | None = recipe.get("budget")
        self.budget_fraction: float | None = recipe.get("budget_fraction")
        quota = recipe.get("quota")
        self.quota = Quota.model_validate(quota) if quota else None
        self.settings = CurationSettings.model_validate(recipe.get("settings", {}))
        self.blobs: BlobStore = tenant_blobs(self.tenant_id)
        self._values: dict[str, dict[str, Any]] = {}

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        return load_registered_model(self.model_id, self.settings.dtype)

    def column(self, score_set_id: str, column: str, record_ids: list[str]) -> list[float | None]:
        """A score set's column aligned with ``record_ids`` (None where it has no value)."""
        if score_set_id not in self._values:
            with SessionLocal() as session:
                row = session.get(ScoreSet, score_set_id)
                if row is None or row.values_blob_key is None:
                    raise EngineError(f"score set {score_set_id} has no stored values")
                key = row.values_blob_key
            self._values[score_set_id] = json.loads(self.blobs.get_bytes(key))
        stored = self._values[score_set_id]
        if column not in stored["columns"]:
            raise EngineError(f"score set {score_set_id} has no column {column!r}")
        by_id = dict(zip(stored["record_ids"], stored["columns"][column], strict=True))
        return [by_id.get(record_id) for record_id in record_ids]


def _records(dataset_id: str) -> tuple[list[data.Example], list[dict[str, Any]]]:
    with SessionLocal() as session:
        rows = session.scalars(
            select(Record).where(Record.dataset_id == dataset_id).order_by(Record.position)
        ).all()
        if not rows:
            raise EngineError(f"dataset {dataset_id} has no records (or no longer exists)")
        return [example_of(r) for r in rows], [dict(r.metadata_ or {}) for r in rows]


def _group(quota: Quota, example: data.Example, metadata: dict[str, Any]) -> str:
    """The quota group of a record; records without one share the group "(none)"."""
    if quota.by == "subtask":
        value: Any = example.subtask
    else:
        value = metadata.get(quota.by.removeprefix("metadata."))
    return "(none)" if value is None else str(value)


def _budget(ctx: CurationContext, n_candidates: int) -> int:
    if ctx.budget is not None:
        return ctx.budget
    assert ctx.budget_fraction is not None  # the API requires one of the two
    return max(1, math.ceil(Fraction(repr(ctx.budget_fraction)) * n_candidates))


def run(ctx: CurationContext) -> None:
    ctx.job.stage("load records")
    examples, metadata = _records(ctx.dataset_id)
    record_ids = [ex.record_id for ex in examples]
    ctx.job.stage("filter")
    kept = list(range(len(examples)))
    after: list[dict[str, Any]] = []
    for f in ctx.filters:
        values = ctx.column(f.score_set_id, f.column, record_ids)
        spec = curation.Filter(values, f.min, f.max, f.min_percentile, f.max_percentile)
        passing = set(curation.apply_filters(len(examples), [spec]))
        kept = [i for i in kept if i in passing]
        after.append({"score_set_id": f.score_set_id, "column": f.column, "remaining": len(kept)})
    pick = ctx.pick

    def ref_values(ref: ScoreRef) -> list[float | None]:
        return ctx.column(ref.score_set_id, ref.column, record_ids)

    if pick.method == "rank":
        pick_fn = curation.rank_pick(
            ref_values(pick.by), record_ids, descending=pick.by.order == "desc"
        )
    elif pick.method == "random":
        pick_fn = curation.random_pick(record_ids, seed=pick.seed)
    else:
        assert pick.method in EMBEDDING_PICKS
        ctx.job.stage("embeddings", total=len(examples))
        x = embed_examples(
            examples,
            ctx.settings.embedding,
            model_and_tokenizer=ctx.model_and_tokenizer,
            max_length=ctx.settings.max_length,
            batch_size=ctx.settings.batch_size,
        )
        ctx.job.advance(len(examples))
        ref = {"qdit": "quality", "deita": "score"}.get(pick.method)
        scored: ScoreRef | None = getattr(pick, ref) if ref else None
        pick_fn = curation.embedding_pick(
            x,
            pick.method,
            seed=getattr(pick, "seed", 0),
            scores=ref_values(scored) if scored else None,
            descending=scored is None or scored.order == "desc",
            alpha=getattr(pick, "alpha", 0.5),
            tau=getattr(pick, "tau", 0.1),
        )
    ctx.job.stage("pick")
    groups = (
        [_group(ctx.quota, ex, md) for ex, md in zip(examples, metadata, strict=True)]
        if ctx.quota
        else None
    )
    chosen = curation.select(
        kept,
        _budget(ctx, len(kept)),
        pick_fn,
        groups=groups,
        max_per_group=ctx.quota.max_per_group if ctx.quota else None,
    )
    stats: dict[str, Any] = {"records": len(examples), "after_filters": after}
    if groups is not None:
        per_group: dict[str, int] = {}
        for i in chosen:
            per_group[groups[i]] = per_group.get(groups[i], 0) + 1
        stats["selected_per_group"] = dict(sorted(per_group.items()))
    with SessionLocal() as session:
        row = session.get(Curation, ctx.curation_id)
        if row is None:
            raise ResourceDeleted(f"curation {ctx.curation_id} was deleted")
        row.record_ids = [record_ids[i] for i in chosen]
        row.n_selected, row.stats = len(chosen), stats
        session.commit()
    ctx.job.succeed()


@celery_app.task(name=CURATION_RUN, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_task(self: Task, curation_id: str) -> None:
    """A whole curation; re-delivered after a crash, it computes the same selection again."""
    try:
        ctx = CurationContext(CurationTask(curation_id=curation_id).curation_id)
    except LookupError:
        log.warning("curation %s does not exist; dropping task", curation_id)
        return
    run_tracked(ctx.job, lambda: run(ctx), task=self)


__all__ = ["run_task"]
