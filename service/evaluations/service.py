"""Evaluation rules. No commits here: the endpoint (or task) commits.

An evaluation is a row in ``evaluations`` plus its ``jobs`` row. Everything a request can get
wrong is refused here with a 422 naming the field, before anything is written or queued: a
model, pool, target, reward spec, selection, curation or score set that does not exist; a
selection of a valuation of another pool, a curation or score set over another dataset or not
succeeded, a score-set column it lacks; an arm with fewer than ``budget`` records (a budget
above the pool's size); duplicate arm names; target records without a response, or without
what the metric reads (``metadata.test`` / ``entry_point`` for python_tests, ``metadata.choices``
and ``metadata.answer`` for multiple choice).

Selection, curation and score-set arms are resolved to their record ids here and kept on the
row: the evaluation does not change, or break, when its sources are deleted later.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import jobs, training
from service.blobs import BlobNotFound, BlobStore
from service.datasets import repository as datasets
from service.db.models import (
    Curation,
    Dataset,
    Evaluation,
    JobStatus,
    Record,
    RewardSpec,
    ScoreSet,
    Selection,
    Valuation,
)
from service.errors import Conflict, InvalidInput, NotFound
from service.evaluations.schemas import EvaluationCreate, EvaluationRead, ExampleRead
from service.models import repository as models
from service.pagination import Page, Pagination, newest_first
from workers.contracts import (
    CurationArm,
    FullArm,
    MultipleChoiceMetric,
    RandomArm,
    RewardMetric,
    ScoreSetArm,
    SelectionArm,
)

JOB_KIND = "evaluation"
PLOT_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
_SHOWN = 20


def _dataset(session: Session, dataset_id: str, field: str) -> Dataset:
    dataset = datasets.get(session, dataset_id)
    if dataset is None:
        raise InvalidInput(f"dataset {dataset_id} does not exist", field=field)
    return dataset


def _enough(n: int, budget: int, what: str, field: str) -> None:
    if n < budget:
        raise InvalidInput(
            f"{what} has {n} records, fewer than the budget of {budget}: every arm trains on "
            "the same number of records",
            field=field,
        )


def _selection_arm(
    session: Session, arm: SelectionArm, pool: Dataset, budget: int, field: str
) -> dict[str, Any]:
    selection = session.get(Selection, arm.selection_id)
    if selection is None:
        raise InvalidInput(f"selection {arm.selection_id} does not exist", field=field)
    valuation = session.get(Valuation, selection.valuation_id)
    if valuation is None or valuation.pool_dataset_id != pool.id:
        raise InvalidInput(
            f"selection {arm.selection_id} selects from dataset "
            f"{valuation.pool_dataset_id if valuation else None}, not the pool {pool.id}",
            field=field,
        )
    _enough(len(selection.record_ids), budget, f"selection {arm.selection_id}", field)
    return {"record_ids": list(selection.record_ids[:budget])}


def _finished_on_pool(
    what: str, row: Any, pool: Dataset, field: str, *, verb: str, output: str, ready: bool
) -> None:
    """``row`` (a curation or score set, ``None`` if missing) exists, works on the pool, and
    has succeeded with its ``output`` (``ready``)."""
    if row is None:
        raise InvalidInput(f"{what} does not exist", field=field)
    if row.dataset_id != pool.id:
        raise InvalidInput(
            f"{what} {verb} dataset {row.dataset_id}, not the pool {pool.id}", field=field
        )
    if row.job.status != JobStatus.succeeded or not ready:
        raise InvalidInput(
            f"{what} has status {row.job.status!r}; its {output} exist once it has succeeded",
            field=field,
        )


def _curation_arm(
    session: Session, arm: CurationArm, pool: Dataset, budget: int, field: str
) -> dict[str, Any]:
    curation = session.get(Curation, arm.curation_id)
    what = f"curation {arm.curation_id}"
    ready = curation is not None and curation.record_ids is not None
    _finished_on_pool(
        what, curation, pool, field, verb="selects from", output="records", ready=ready
    )
    assert curation is not None and curation.record_ids is not None  # checked just above
    _enough(len(curation.record_ids), budget, what, field)
    return {"record_ids": list(curation.record_ids[:budget])}


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _score_set_arm(
    session: Session, blobs: BlobStore, arm: ScoreSetArm, pool: Dataset, budget: int, field: str
) -> dict[str, Any]:
    score_set = session.get(ScoreSet, arm.score_set_id)
    ready = score_set is not None and score_set.values_blob_key is not None
    _finished_on_pool(
        f"score set {arm.score_set_id}", score_set, pool, field, verb="scores", output="values",
        ready=ready,
    )  # fmt: skip
    assert score_set is not None and score_set.values_blob_key is not None  # checked above
    if arm.column not in (score_set.summary or {}):
        raise InvalidInput(
            f"score set {arm.score_set_id} has no column {arm.column!r}; it has "
            f"{list(score_set.summary or {})[:_SHOWN]}",
            field=f"{field}.column",
        )
    try:
        raw = json.loads(blobs.get_bytes(score_set.values_blob_key))
    except BlobNotFound:
        raise Conflict(
            f"the values of score set {arm.score_set_id} are missing from the blob store",
            field=field,
        ) from None
    values = [_finite(v) for v in raw["columns"][arm.column]]
    scored = [(r, v) for r, v in zip(raw["record_ids"], values, strict=True) if v is not None]
    _enough(len(scored), budget, f"column {arm.column!r} of score set {arm.score_set_id}", field)
    sign = -1.0 if arm.order == "desc" else 1.0
    scored.sort(key=lambda item: (sign * item[1], item[0]))
    return {"record_ids": [str(r) for r, _ in scored[:budget]]}


def _default_name(arm: Any) -> str:
    if isinstance(arm, SelectionArm):
        return f"selection {arm.selection_id[:8]}"
    if isinstance(arm, CurationArm):
        return f"curation {arm.curation_id[:8]}"
    if isinstance(arm, ScoreSetArm):
        return f"{arm.column} {arm.order} ({arm.score_set_id[:8]})"
    return str(arm.kind)


def _arms(
    session: Session, blobs: BlobStore, body: EvaluationCreate, pool: Dataset
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, arm in enumerate(body.arms):
        field = f"body.arms[{i}]"
        resolved: dict[str, Any] = arm.model_dump(mode="json")
        resolved["name"] = arm.name or _default_name(arm)
        if resolved["name"] in names:
            raise InvalidInput(
                f"two arms are named {resolved['name']!r}; give each arm a distinct name",
                field=f"{field}.name",
            )
        names.add(resolved["name"])
        if isinstance(arm, SelectionArm):
            resolved |= _selection_arm(session, arm, pool, body.budget, field)
        elif isinstance(arm, CurationArm):
            resolved |= _curation_arm(session, arm, pool, body.budget, field)
        elif isinstance(arm, ScoreSetArm):
            resolved |= _score_set_arm(session, blobs, arm, pool, body.budget, field)
        elif isinstance(arm, RandomArm):
            if len(set(arm.seeds)) != len(arm.seeds):
                raise InvalidInput("the seeds of a random arm must differ", field=f"{field}.seeds")
            _enough(pool.n_records, body.budget, f"the pool {pool.id}", "body.budget")
        elif isinstance(arm, FullArm):
            pass
        out.append(resolved)
    reference = body.reference_arm
    if reference is None:
        reference = next((a["name"] for a in out if a["kind"] == "random"), None)
    elif reference not in names:
        raise InvalidInput(
            f"no arm is named {reference!r}; the arms are {[a['name'] for a in out]}",
            field="body.reference_arm",
        )
    for resolved in out:
        resolved["reference"] = resolved["name"] == reference
    return out


def _target_metadata(session: Session, target: Dataset, body: EvaluationCreate) -> None:
    """What the metric reads besides prompt and response must be on every target record."""
    metric = body.metric
    if metric is None:
        return
    if isinstance(metric, RewardMetric):
        spec = session.get(RewardSpec, metric.reward_spec_id)
        if spec is None:
            raise InvalidInput(
                f"reward spec {metric.reward_spec_id} does not exist",
                field="body.metric.reward_spec_id",
            )
        if spec.kind != "python_tests":
            return  # label kinds fall back to the response, which every record has
    rows = session.execute(
        select(Record.record_id, Record.metadata_)
        .where(Record.dataset_id == target.id)
        .order_by(Record.position)
    )
    bad: list[str] = []
    count = 0
    for record_id, metadata in rows:
        metadata = metadata if isinstance(metadata, dict) else {}
        if isinstance(metric, MultipleChoiceMetric):
            ok = _multiple_choice_ok(metadata)
            wanted = "metadata.choices (two or more distinct strings) and metadata.answer"
        else:
            ok = all(
                isinstance(metadata.get(f), str) and metadata[f] for f in ("test", "entry_point")
            )
            wanted = "non-empty string metadata.test and metadata.entry_point"
        if not ok:
            count += 1
            if len(bad) < _SHOWN:
                bad.append(record_id)
    if count:
        more = f" (and {count - len(bad)} more)" if count > len(bad) else ""
        raise InvalidInput(
            f"target dataset {target.id} has {count} records without {wanted}, which the "
            f"metric reads: " + ", ".join(bad) + more,
            field="body.target_dataset_id",
        )


def _multiple_choice_ok(metadata: dict[str, Any]) -> bool:
    """The convention of ``workers.engine.evaluation.multiple_choice_answer`` (same rules)."""
    choices = metadata.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
        or len(set(choices)) != len(choices)
    ):
        return False
    answer = metadata.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        return 0 <= answer < len(choices)
    return isinstance(answer, str) and answer in choices


def _in_pool(session: Session, pool_id: str, target_id: str) -> int:
    """Target records whose messages (content hash) are also a pool record's."""
    pool_hashes = select(Record.content_hash).where(Record.dataset_id == pool_id)
    return int(
        session.scalar(
            select(func.count())
            .select_from(Record)
            .where(Record.dataset_id == target_id, Record.content_hash.in_(pool_hashes))
        )
        or 0
    )


def create_evaluation(session: Session, blobs: BlobStore, body: EvaluationCreate) -> Evaluation:
    if not models.exists(session, body.model_id):
        raise InvalidInput(f"model {body.model_id} does not exist", field="body.model_id")
    pool = _dataset(session, body.pool_dataset_id, "body.pool_dataset_id")
    target = _dataset(session, body.target_dataset_id, "body.target_dataset_id")
    for dataset, field in ((pool, "body.pool_dataset_id"), (target, "body.target_dataset_id")):
        if dataset.n_prompt_only:
            raise InvalidInput(
                f"dataset {dataset.id} has {dataset.n_prompt_only} records without a response; "
                "training and the target loss need a response on every record",
                field=field,
            )
    arms = _arms(session, blobs, body, pool)
    t = body.settings.training
    sizes = {body.budget} | ({pool.n_records} if any(a["kind"] == "full" for a in arms) else set())
    for n in sorted(sizes):
        training.refuse_lr_zero(
            n,
            t.batch_size,
            t.epochs,
            t.warmup_ratio,
            what=f"an arm of {n} records",
            field="body.settings.training.warmup_ratio",
        )
    _target_metadata(session, target, body)
    metric = body.metric.model_dump(mode="json") if body.metric is not None else None
    job = jobs.new_job(session, JOB_KIND)
    leaked = _in_pool(session, pool.id, target.id)
    if leaked:
        job.notes = [
            f"{leaked} of the {target.n_records} target records also appear in the pool (the "
            "same messages): arms that train on them are not evaluated on held-out data"
        ]
    evaluation = Evaluation(
        job_id=job.id,
        name=body.name,
        model_id=body.model_id,
        pool_dataset_id=pool.id,
        target_dataset_id=target.id,
        reward_spec_id=body.metric.reward_spec_id
        if isinstance(body.metric, RewardMetric)
        else None,
        budget=body.budget,
        arms=arms,
        metric=metric,
        settings=body.settings.model_dump(mode="json"),
    )
    evaluation.job = job
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, evaluation_id: str, *, for_update: bool = False) -> Evaluation:
    evaluation = session.scalar(select(Evaluation).where(Evaluation.id == evaluation_id))
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} not found", field="evaluation_id")
    if for_update:
        jobs.lock(session, evaluation.job_id)
    return evaluation


def cancel_evaluation(session: Session, evaluation_id: str) -> Evaluation:
    evaluation = get_evaluation(session, evaluation_id, for_update=True)
    jobs.cancel(session, evaluation.job, what=f"evaluation {evaluation_id}")
    return evaluation


def plot_key(session: Session, evaluation_id: str, fmt: str) -> str:
    """Blob key of a finished evaluation's figure; 409 until it has succeeded."""
    evaluation = get_evaluation(session, evaluation_id)
    key = evaluation.plot_png_key if fmt == "png" else evaluation.plot_svg_key
    if evaluation.job.status != JobStatus.succeeded or key is None:
        raise Conflict(
            f"evaluation {evaluation_id} has status {evaluation.job.status!r}; its plots exist "
            "only once it has succeeded"
        )
    return key


def examples_key(evaluation_id: str) -> str:
    """As ``workers.tasks.evaluation.examples_key`` (where the worker writes it)."""
    return f"evaluations/{evaluation_id}/examples.json"


def list_examples(
    session: Session, blobs: BlobStore, evaluation_id: str, page: Pagination
) -> Page[ExampleRead]:
    """Each target record's loss (and metric) under every arm, in target order; 409 until the
    evaluation has succeeded."""
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.job.status != JobStatus.succeeded:
        raise Conflict(
            f"evaluation {evaluation_id} has status {evaluation.job.status!r}; its per-example "
            "values exist only once it has succeeded"
        )
    try:
        raw = json.loads(blobs.get_bytes(examples_key(evaluation_id)))
    except BlobNotFound:
        raise NotFound(
            f"the per-example values of evaluation {evaluation_id} are missing from the blob store"
        ) from None
    ids: list[str] = raw["record_ids"]
    arms: dict[str, dict[str, Any]] = raw["arms"]
    has_metric = raw["base"]["metric"] is not None
    items = []
    for i in range(page.offset, min(page.offset + page.limit, len(ids))):
        items.append(
            ExampleRead(
                record_id=ids[i],
                loss={name: a["loss"][i] for name, a in arms.items()},
                metric={name: a["metric"][i] for name, a in arms.items()} if has_metric else None,
                base_loss=raw["base"]["loss"][i],
                base_metric=raw["base"]["metric"][i] if has_metric else None,
            )
        )
    return Page(items=items, total=len(ids), limit=page.limit, offset=page.offset)


def _arm_read(arm: dict[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in arm.items() if k != "record_ids"}
    ids = arm.get("record_ids")
    public["n_records"] = len(ids) if ids is not None else None
    return public


def to_read(evaluation: Evaluation) -> EvaluationRead:
    job = evaluation.job
    succeeded = job.status == JobStatus.succeeded
    payload: dict[str, Any] = {
        "id": evaluation.id,
        "job_id": evaluation.job_id,
        "name": evaluation.name,
        "model_id": evaluation.model_id,
        "pool_dataset_id": evaluation.pool_dataset_id,
        "target_dataset_id": evaluation.target_dataset_id,
        "reward_spec_id": evaluation.reward_spec_id,
        "budget": evaluation.budget,
        "arms": [_arm_read(a) for a in evaluation.arms],
        "metric": evaluation.metric,
        "settings": evaluation.settings,
        **jobs.job_state(job),
        "result": evaluation.result if succeeded else None,
        "plots": (
            {fmt: f"/v1/evaluations/{evaluation.id}/plot.{fmt}" for fmt in PLOT_FORMATS}
            if succeeded and evaluation.plot_png_key
            else None
        ),
        "created_at": evaluation.created_at,
    }
    return EvaluationRead.model_validate(payload)


def list_evaluations(session: Session, page: Pagination) -> Page[EvaluationRead]:
    rows, total = newest_first(session, Evaluation, page)
    return Page(items=[to_read(e) for e in rows], total=total, limit=page.limit, offset=page.offset)
