"""Study rules. No commits here: the endpoint (or task) commits.

A study is a row in ``studies`` plus its ``jobs`` row, like a valuation. Everything a study
can get wrong about its inputs (a pairing that does not line up, a probe set without
responses, checkpoints that are not there) is refused here with a 422 naming it, before
anything is written or queued: the worker should only fail for reasons a user could not see.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import jobs
from service.datasets import repository as datasets
from service.db.models import (
    Checkpoint,
    JobStatus,
    Record,
    Study,
    WarmupRun,
)
from service.errors import Conflict, InvalidInput, NotFound
from service.pagination import Page, Pagination, newest_first
from service.studies.schemas import StudyCreate, StudyRead

JOB_KIND = "study"
PLOT_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
_SHOWN = 5  # offending keys or records named in an error message


def _shown(items: list[str]) -> str:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(repr(i) for i in items[:_SHOWN]) + more


def _pair_ids(session: Session, dataset_id: str, pair_key: str, field: str) -> set[str]:
    """The dataset's pair ids (``metadata[pair_key]`` as strings), each exactly once."""
    rows = session.execute(
        select(Record.record_id, Record.metadata_)
        .where(Record.dataset_id == dataset_id)
        .order_by(Record.position)
    ).all()
    missing, values = [], []
    for record_id, metadata in rows:
        value = (metadata or {}).get(pair_key)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            missing.append(record_id)
        else:
            values.append(str(value))
    if missing:
        raise InvalidInput(
            f"dataset {dataset_id}: records {_shown(missing)} have no metadata.{pair_key} "
            "(a non-empty string or integer) to pair them by",
            field=field,
        )
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise InvalidInput(
            f"dataset {dataset_id}: metadata.{pair_key} values {_shown(repeated)} occur more "
            "than once; each pair id must name one record",
            field=field,
        )
    if len(values) < 2:
        raise InvalidInput(
            f"dataset {dataset_id} has {len(values)} pair(s); a study needs at least 2 "
            "(s_cross compares each pair with the others)",
            field=field,
        )
    return set(values)


def _dataset_with_responses(session: Session, dataset_id: str, field: str) -> None:
    dataset = datasets.get(session, dataset_id)
    if dataset is None:
        raise InvalidInput(f"dataset {dataset_id} does not exist", field=field)
    if dataset.n_prompt_only:
        raise InvalidInput(
            f"dataset {dataset_id} has {dataset.n_prompt_only} records without a response; "
            "RelInf uses the loss of each record's response, so every record needs one",
            field=field,
        )


def _checkpoints(session: Session, run_id: str) -> int:
    run = session.get(WarmupRun, run_id)
    if run is None:
        raise InvalidInput(f"warmup run {run_id} does not exist", field="body.warmup_run_id")
    if run.status != "complete":
        raise InvalidInput(
            f"warmup run {run_id} is still {run.status!r}; a study needs all its checkpoints",
            field="body.warmup_run_id",
        )
    count = session.scalar(
        select(func.count()).select_from(Checkpoint).where(Checkpoint.warmup_run_id == run_id)
    )
    if not count:
        raise InvalidInput(f"warmup run {run_id} has no checkpoints", field="body.warmup_run_id")
    return count


def create_study(session: Session, body: StudyCreate) -> Study:
    names = [p.name for p in body.probe_sets]
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise InvalidInput(
            f"probe set names must differ; repeated: {_shown(repeated)}", field="body.probe_sets"
        )
    if body.reference is not None and body.reference not in names:
        raise InvalidInput(
            f"reference {body.reference!r} is not one of the probe sets {names}",
            field="body.reference",
        )
    _checkpoints(session, body.warmup_run_id)
    _dataset_with_responses(session, body.eval_dataset_id, "body.eval_dataset_id")
    expected = _pair_ids(session, body.eval_dataset_id, body.pair_key, "body.eval_dataset_id")
    for i, probe_set in enumerate(body.probe_sets):
        field = f"body.probe_sets[{i}].dataset_id"
        _dataset_with_responses(session, probe_set.dataset_id, field)
        got = _pair_ids(session, probe_set.dataset_id, body.pair_key, field)
        if got != expected:
            problems = []
            if expected - got:
                problems.append(f"missing {_shown(sorted(expected - got))}")
            if got - expected:
                problems.append(f"not in the evaluation set: {_shown(sorted(got - expected))}")
            raise InvalidInput(
                f"probe set {probe_set.name!r} does not pair with the evaluation set by "
                f"metadata.{body.pair_key}: " + "; ".join(problems),
                field=field,
            )
    job = jobs.new_job(session, JOB_KIND)
    study = Study(
        job_id=job.id,
        name=body.name,
        warmup_run_id=body.warmup_run_id,
        eval_dataset_id=body.eval_dataset_id,
        probe_sets=[p.model_dump() for p in body.probe_sets],
        pair_key=body.pair_key,
        reference=body.reference,
        settings=body.settings.model_dump(mode="json"),
    )
    study.job = job
    session.add(study)
    session.flush()
    return study


def get_study(session: Session, study_id: str, *, for_update: bool = False) -> Study:
    study = session.scalar(select(Study).where(Study.id == study_id))
    if study is None:
        raise NotFound(f"study {study_id} not found", field="study_id")
    if for_update:
        jobs.lock(session, study.job_id)
    return study


def cancel_study(session: Session, study_id: str) -> Study:
    study = get_study(session, study_id, for_update=True)
    jobs.cancel(session, study.job, what=f"study {study_id}")
    return study


def plot_key(session: Session, study_id: str, fmt: str) -> str:
    """Blob key of a finished study's figure; 409 until the study has succeeded."""
    study = get_study(session, study_id)
    key = study.plot_png_key if fmt == "png" else study.plot_svg_key
    if study.job.status != JobStatus.succeeded or key is None:
        raise Conflict(
            f"study {study_id} has status {study.job.status!r}; its plots exist only once it "
            "has succeeded"
        )
    return key


def to_read(study: Study) -> StudyRead:
    job = study.job
    succeeded = job.status == JobStatus.succeeded
    payload: dict[str, Any] = {
        "id": study.id,
        "job_id": study.job_id,
        "name": study.name,
        "warmup_run_id": study.warmup_run_id,
        "eval_dataset_id": study.eval_dataset_id,
        "probe_sets": study.probe_sets,
        "pair_key": study.pair_key,
        "reference": study.reference,
        "settings": study.settings,
        **jobs.job_state(job),
        "result": study.result if succeeded else None,
        "plots": (
            {fmt: f"/v1/studies/{study.id}/plot.{fmt}" for fmt in PLOT_FORMATS}
            if succeeded
            else None
        ),
        "created_at": study.created_at,
    }
    return StudyRead.model_validate(payload)


def list_studies(session: Session, page: Pagination) -> Page[StudyRead]:
    rows, total = newest_first(session, Study, page)
    return Page(items=[to_read(s) for s in rows], total=total, limit=page.limit, offset=page.offset)
