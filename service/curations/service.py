"""Curation rules. No commits here: the endpoint commits.

Everything the recipe references is checked before anything is written: each score set exists,
has succeeded, scores this curation's dataset and has the column named; the budget is given one
way; a model is given exactly when the pick embeds with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import jobs
from service.curations.schemas import CurationCreate, CurationRead
from service.datasets import repository as datasets
from service.db.models import Curation, JobStatus, ScoreSet
from service.errors import Conflict, InvalidInput, NotFound
from service.models import repository as models
from service.pagination import Page, Pagination, newest_first
from workers.contracts import EMBEDDING_PICKS

JOB_KIND = "curation"


def _check_ref(
    session: Session, dataset_id: str, score_set_id: str, column: str, field: str
) -> None:
    score_set = session.get(ScoreSet, score_set_id)
    if score_set is None:
        raise InvalidInput(f"score set {score_set_id} does not exist", field=field)
    if score_set.dataset_id != dataset_id:
        raise InvalidInput(
            f"score set {score_set_id} scores dataset {score_set.dataset_id}, not {dataset_id}",
            field=field,
        )
    if score_set.job.status != JobStatus.succeeded or not score_set.summary:
        raise InvalidInput(
            f"score set {score_set_id} has status {score_set.job.status!r}; a curation needs "
            "its values, which exist once it has succeeded",
            field=field,
        )
    if column not in score_set.summary:
        raise InvalidInput(
            f"score set {score_set_id} has no column {column!r}; it has {list(score_set.summary)}",
            field=field,
        )


def create_curation(session: Session, body: CurationCreate) -> Curation:
    if datasets.get(session, body.dataset_id) is None:
        raise InvalidInput(f"dataset {body.dataset_id} does not exist", field="body.dataset_id")
    if (body.budget is None) == (body.budget_fraction is None):
        raise InvalidInput("give exactly one of budget and budget_fraction", field="body.budget")
    for i, f in enumerate(body.filters):
        where = f"body.filters[{i}]"
        if all(v is None for v in (f.min, f.max, f.min_percentile, f.max_percentile)):
            raise InvalidInput(
                "a filter needs min, max, min_percentile or max_percentile", field=where
            )
        if f.min is not None and f.max is not None and not f.min < f.max:
            raise InvalidInput(f"min {f.min} must be below max {f.max}", field=where)
        if (
            f.min_percentile is not None
            and f.max_percentile is not None
            and f.min_percentile > f.max_percentile
        ):
            raise InvalidInput("min_percentile must not exceed max_percentile", field=where)
        _check_ref(session, body.dataset_id, f.score_set_id, f.column, f"{where}.score_set_id")
    pick = body.pick
    for attr in ("by", "quality", "score"):
        ref = getattr(pick, attr, None)
        if ref is not None:
            field = f"body.pick.{attr}.score_set_id"
            _check_ref(session, body.dataset_id, ref.score_set_id, ref.column, field)
    uses_model = pick.method in EMBEDDING_PICKS and body.settings.embedding == "lm"
    if uses_model and body.model_id is None:
        raise InvalidInput(
            f"pick {pick.method!r} with settings.embedding 'lm' needs a model_id",
            field="body.model_id",
        )
    if not uses_model and body.model_id is not None:
        raise InvalidInput(
            "model_id is used only by diversity picks with settings.embedding 'lm'",
            field="body.model_id",
        )
    if body.model_id is not None and not models.exists(session, body.model_id):
        raise InvalidInput(f"model {body.model_id} does not exist", field="body.model_id")
    job = jobs.new_job(session, JOB_KIND)
    recipe = body.model_dump(
        mode="json", exclude={"name", "dataset_id", "model_id", "callback_url"}
    )
    curation = Curation(
        job_id=job.id,
        name=body.name,
        dataset_id=body.dataset_id,
        model_id=body.model_id,
        recipe=recipe,
    )
    curation.job = job
    session.add(curation)
    session.flush()
    return curation


def get_curation(session: Session, curation_id: str, *, for_update: bool = False) -> Curation:
    curation = session.scalar(select(Curation).where(Curation.id == curation_id))
    if curation is None:
        raise NotFound(f"curation {curation_id} not found", field="curation_id")
    if for_update:
        jobs.lock(session, curation.job_id)
    return curation


def cancel_curation(session: Session, curation_id: str) -> Curation:
    curation = get_curation(session, curation_id, for_update=True)
    jobs.cancel(session, curation.job, what=f"curation {curation_id}")
    return curation


def require_succeeded(curation: Curation) -> list[str]:
    if curation.job.status != JobStatus.succeeded or curation.record_ids is None:
        raise Conflict(
            f"curation {curation.id} has status {curation.job.status!r}; its records exist only "
            "once it has succeeded"
        )
    return list(curation.record_ids)


def to_read(curation: Curation) -> CurationRead:
    job = curation.job
    succeeded = job.status == JobStatus.succeeded
    payload: dict[str, Any] = {
        "id": curation.id,
        "job_id": curation.job_id,
        "name": curation.name,
        "dataset_id": curation.dataset_id,
        "model_id": curation.model_id,
        "recipe": curation.recipe,
        **jobs.job_state(job),
        "n_selected": curation.n_selected if succeeded else None,
        "record_ids": curation.record_ids if succeeded else None,
        "stats": curation.stats if succeeded else None,
        "created_at": curation.created_at,
    }
    return CurationRead.model_validate(payload)


def list_curations(session: Session, page: Pagination) -> Page[CurationRead]:
    rows, total = newest_first(session, Curation, page)
    return Page(items=[to_read(c) for c in rows], total=total, limit=page.limit, offset=page.offset)
