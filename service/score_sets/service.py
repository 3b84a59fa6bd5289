"""Score-set rules. No commits here: the endpoint (or task) commits.

A score set is a row in ``score_sets`` plus its ``jobs`` row, like a study. Everything a
request can get wrong (a scorer without the model, probes or reward spec it needs, or with ones
it does not use, a quality or reward set over prompt-only records, a label reward over records
without ``metadata.label``, a knn set smaller than k or than its k-means clusters) is refused
here with a 422 naming the field, before anything is written or queued.

Once the job has succeeded the worker has written ``values_blob_key`` (``{"record_ids": [...],
"columns": {name: [value or null, ...]}}`` in dataset order), ``summary`` (per column, in a
stable order) and ``n_records`` (and, for knn, ``report``); values, distributions and
comparisons are read from those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import jobs
from service.blobs import BlobNotFound, BlobStore
from service.datasets import repository as datasets
from service.db.models import JobStatus, Record, RewardSpec, ScoreSet
from service.errors import Conflict, InvalidInput, NotFound
from service.models import repository as models
from service.pagination import Page, Pagination, newest_first
from service.score_sets.schemas import (
    CompareRead,
    DistributionRead,
    Order,
    RecordValues,
    ScoreSetCreate,
    ScoreSetRead,
)
from workers.contracts import (
    EMBEDDING_SCORERS,
    IMPORTANCE_SCORERS,
    REPORT_N_CLUSTERS,
    REWARD_NEEDS_LABEL,
    ScoreSetSettings,
    scorer_needs_model,
)

JOB_KIND = "score_set"
_SHOWN = 20  # column names listed in an error message


def _probe_dataset(session: Session, body: ScoreSetCreate) -> None:
    importance = ", ".join(IMPORTANCE_SCORERS)
    if body.scorer not in IMPORTANCE_SCORERS:
        if body.probe_dataset_id is not None:
            raise InvalidInput(
                f"probe_dataset_id is for the importance scorers ({importance}), not "
                f"{body.scorer!r}",
                field="body.probe_dataset_id",
            )
        return
    if body.probe_dataset_id is None:
        raise InvalidInput(
            f"scorer {body.scorer!r} scores records against probes: give a probe_dataset_id",
            field="body.probe_dataset_id",
        )
    if not datasets.exists(session, body.probe_dataset_id):
        raise InvalidInput(
            f"dataset {body.probe_dataset_id} does not exist", field="body.probe_dataset_id"
        )


def _uses_a_model(body: ScoreSetCreate) -> str:
    """Why (or why not) the scorer needs a model, for error messages."""
    if body.scorer == "quality":
        return "scorer 'quality' computes its scores with a model"
    if body.scorer in EMBEDDING_SCORERS:
        embedding = body.settings.embedding
        if embedding == "lm":
            return f"scorer {body.scorer!r} with settings.embedding 'lm' embeds with a model"
        shown = embedding if isinstance(embedding, str) else "sentence_transformer"
        return (
            f"scorer {body.scorer!r} with settings.embedding {shown!r} uses no model (only "
            "'quality', and 'knn' or 'rds' with settings.embedding 'lm', do)"
        )
    return (
        f"scorer {body.scorer!r} uses no model (only 'quality', and 'knn' or 'rds' with "
        "settings.embedding 'lm', do)"
    )


def _model(session: Session, body: ScoreSetCreate) -> None:
    needs = scorer_needs_model(body.scorer, body.settings)
    if not needs:
        if body.model_id is not None:
            raise InvalidInput(f"{_uses_a_model(body)}; drop model_id", field="body.model_id")
        return
    if body.model_id is None:
        raise InvalidInput(f"{_uses_a_model(body)}: give a model_id", field="body.model_id")
    if not models.exists(session, body.model_id):
        raise InvalidInput(f"model {body.model_id} does not exist", field="body.model_id")


def _reward_spec(session: Session, body: ScoreSetCreate) -> RewardSpec | None:
    """Scorer 'reward' needs a reward spec; the other scorers must not get one."""
    if body.scorer != "reward":
        if body.reward_spec_id is not None:
            raise InvalidInput(
                f"reward_spec_id is for scorer 'reward', not {body.scorer!r}",
                field="body.reward_spec_id",
            )
        return None
    if body.reward_spec_id is None:
        raise InvalidInput(
            "scorer 'reward' scores each record's response with a reward spec: give a "
            "reward_spec_id",
            field="body.reward_spec_id",
        )
    spec = session.get(RewardSpec, body.reward_spec_id)
    if spec is None:
        raise InvalidInput(
            f"reward spec {body.reward_spec_id} does not exist", field="body.reward_spec_id"
        )
    return spec


def _lacking(session: Session, dataset_id: str, fields: Sequence[str]) -> tuple[int, list[str]]:
    """How many records lack a non-empty string ``metadata.<field>`` for one of ``fields``,
    and the first of their record ids."""
    rows = session.execute(
        select(Record.record_id, Record.metadata_)
        .where(Record.dataset_id == dataset_id)
        .order_by(Record.position)
    )
    count, shown = 0, list[str]()
    for record_id, metadata in rows:
        metadata = metadata if isinstance(metadata, dict) else {}
        if any(not isinstance(metadata.get(f), str) or not metadata[f] for f in fields):
            count += 1
            if len(shown) < _SHOWN:
                shown.append(record_id)
    return count, shown


def _reward_metadata(session: Session, dataset_id: str, spec: RewardSpec) -> None:
    """What a reward reads besides prompt and response must be on every record: the label of
    a label kind (``metadata.label``), the tests of python_tests."""
    fields: tuple[str, ...]
    if REWARD_NEEDS_LABEL[spec.kind]:
        fields, why = ("label",), f"a {spec.kind!r} reward compares each response with it"
    elif spec.kind == "python_tests":
        fields = ("test", "entry_point")
        why = "a 'python_tests' reward runs them against each response"
    else:
        return
    count, shown = _lacking(session, dataset_id, fields)
    if count:
        wanted = " and ".join(f"metadata.{f}" for f in fields)
        more = f" (and {count - len(shown)} more)" if count > len(shown) else ""
        raise InvalidInput(
            f"dataset {dataset_id} has {count} records without a non-empty string {wanted}; {why}: "
            + ", ".join(shown)
            + more,
            field="body.dataset_id",
        )


def create_score_set(session: Session, body: ScoreSetCreate) -> ScoreSet:
    dataset = datasets.get(session, body.dataset_id)
    if dataset is None:
        raise InvalidInput(f"dataset {body.dataset_id} does not exist", field="body.dataset_id")
    _probe_dataset(session, body)
    _model(session, body)
    reward = _reward_spec(session, body)
    if body.scorer in ("quality", "reward") and dataset.n_prompt_only:
        raise InvalidInput(
            f"dataset {dataset.id} has {dataset.n_prompt_only} records without a response; "
            f"{body.scorer} scores are computed on each record's response, so every record "
            "needs one",
            field="body.dataset_id",
        )
    if reward is not None:
        _reward_metadata(session, dataset.id, reward)
    settings = body.settings
    if body.scorer == "knn":
        if dataset.n_records <= settings.k:
            raise InvalidInput(
                f"dataset {dataset.id} has {dataset.n_records} records; the distance to the k-th "
                f"nearest neighbour (k={settings.k}) needs more than k",
                field="body.settings.k",
            )
        if settings.n_clusters is None:
            n_clusters = min(REPORT_N_CLUSTERS, dataset.n_records)
            settings = ScoreSetSettings.model_validate(
                settings.model_dump() | {"n_clusters": n_clusters}
            )
        elif settings.n_clusters > dataset.n_records:
            raise InvalidInput(
                f"dataset {dataset.id} has {dataset.n_records} records, fewer than the "
                f"{settings.n_clusters} k-means clusters of the diversity report",
                field="body.settings.n_clusters",
            )
    job = jobs.new_job(session, JOB_KIND)
    score_set = ScoreSet(
        job_id=job.id,
        name=body.name,
        scorer=body.scorer,
        dataset_id=body.dataset_id,
        model_id=body.model_id,
        probe_dataset_id=body.probe_dataset_id,
        reward_spec_id=body.reward_spec_id,
        settings=settings.model_dump(mode="json"),
    )
    score_set.job = job
    session.add(score_set)
    session.flush()
    return score_set


def get_score_set(
    session: Session, score_set_id: str, *, for_update: bool = False, field: str = "score_set_id"
) -> ScoreSet:
    score_set = session.scalar(select(ScoreSet).where(ScoreSet.id == score_set_id))
    if score_set is None:
        raise NotFound(f"score set {score_set_id} not found", field=field)
    if for_update:
        jobs.lock(session, score_set.job_id)
    return score_set


def cancel_score_set(session: Session, score_set_id: str) -> ScoreSet:
    score_set = get_score_set(session, score_set_id, for_update=True)
    jobs.cancel(session, score_set.job, what=f"score set {score_set_id}")
    return score_set


def _plot_path(score_set_id: str, column: str, summary: dict[str, Any]) -> str | None:
    if not summary.get("plot_blob_key"):
        return None
    return f"/v1/score-sets/{score_set_id}/distribution.png?column={quote(column, safe=':')}"


def _public_summary(score_set: ScoreSet) -> dict[str, dict[str, Any]]:
    out = {}
    for column, summary in (score_set.summary or {}).items():
        public = {k: v for k, v in summary.items() if k != "plot_blob_key"}
        out[column] = {**public, "plot": _plot_path(score_set.id, column, summary)}
    return out


def to_read(score_set: ScoreSet) -> ScoreSetRead:
    job = score_set.job
    succeeded = job.status == JobStatus.succeeded
    payload: dict[str, Any] = {
        "id": score_set.id,
        "job_id": score_set.job_id,
        "name": score_set.name,
        "scorer": score_set.scorer,
        "dataset_id": score_set.dataset_id,
        "model_id": score_set.model_id,
        "probe_dataset_id": score_set.probe_dataset_id,
        "reward_spec_id": score_set.reward_spec_id,
        "settings": score_set.settings,
        **jobs.job_state(job),
        "n_records": score_set.n_records,
        "columns": list(score_set.summary or {}) if succeeded else None,
        "summary": _public_summary(score_set) if succeeded else None,
        "report": score_set.report if succeeded else None,
        "created_at": score_set.created_at,
    }
    return ScoreSetRead.model_validate(payload)


def list_score_sets(session: Session, page: Pagination) -> Page[ScoreSetRead]:
    rows, total = newest_first(session, ScoreSet, page)
    return Page(items=[to_read(s) for s in rows], total=total, limit=page.limit, offset=page.offset)


# --- results: once the job has succeeded ------------------------------------------------------


def succeeded_score_set(
    session: Session, score_set_id: str, field: str = "score_set_id"
) -> ScoreSet:
    """The score set, 409 unless it has succeeded (and so has its values and summary)."""
    score_set = get_score_set(session, score_set_id, field=field)
    status = score_set.job.status
    if status != JobStatus.succeeded or score_set.values_blob_key is None:
        raise Conflict(
            f"score set {score_set_id} has status {status!r}; its values exist only once it has "
            "succeeded",
            field=field,
        )
    return score_set


def _column_summary(score_set: ScoreSet, column: str, field: str) -> dict[str, Any]:
    summary = score_set.summary or {}
    if column not in summary:
        known = list(summary)
        more = f" (and {len(known) - _SHOWN} more)" if len(known) > _SHOWN else ""
        raise InvalidInput(
            f"score set {score_set.id} has no column {column!r}; its columns are "
            + ", ".join(repr(c) for c in known[:_SHOWN])
            + more,
            field=field,
        )
    column_summary: dict[str, Any] = summary[column]
    return column_summary


@dataclass(frozen=True)
class _Values:
    record_ids: list[str]
    columns: dict[str, list[float | None]]


def _finite(value: Any) -> float | None:
    """A value as JSON can carry it: NaN and infinities (which the worker should have written
    as null) read as undefined."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _values(blobs: BlobStore, score_set: ScoreSet) -> _Values:
    assert score_set.values_blob_key is not None  # succeeded_score_set checked it
    try:
        raw = json.loads(blobs.get_bytes(score_set.values_blob_key))
    except BlobNotFound:
        raise NotFound(
            f"the values of score set {score_set.id} are missing from the blob store "
            f"({score_set.values_blob_key})"
        ) from None
    return _Values(
        record_ids=[str(r) for r in raw["record_ids"]],
        columns={name: [_finite(v) for v in column] for name, column in raw["columns"].items()},
    )


def list_values(
    session: Session, blobs: BlobStore, score_set_id: str, page: Pagination
) -> Page[RecordValues]:
    score_set = succeeded_score_set(session, score_set_id)
    values = _values(blobs, score_set)
    stop = page.offset + page.limit
    items = [
        RecordValues(
            record_id=record_id,
            values={name: column[i] for name, column in values.columns.items()},
        )
        for i, record_id in enumerate(values.record_ids[page.offset : stop], start=page.offset)
    ]
    return Page(items=items, total=len(values.record_ids), limit=page.limit, offset=page.offset)


def distribution(session: Session, score_set_id: str, column: str) -> DistributionRead:
    score_set = succeeded_score_set(session, score_set_id)
    summary = _column_summary(score_set, column, "query.column")
    public = {k: v for k, v in summary.items() if k != "plot_blob_key"}
    return DistributionRead.model_validate(
        {
            **public,
            "score_set_id": score_set.id,
            "column": column,
            "plot": _plot_path(score_set.id, column, summary),
        }
    )


def distribution_png(session: Session, blobs: BlobStore, score_set_id: str, column: str) -> bytes:
    score_set = succeeded_score_set(session, score_set_id)
    key = _column_summary(score_set, column, "query.column").get("plot_blob_key")
    if not key:
        raise NotFound(f"score set {score_set_id} has no plot of column {column!r}")
    try:
        return blobs.get_bytes(key)
    except BlobNotFound:
        raise NotFound(
            f"the plot of column {column!r} of score set {score_set_id} is missing from the "
            f"blob store ({key})"
        ) from None


# --- comparing two columns ------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and values[order[stop]] == values[order[start]]:
            stop += 1
        rank = (start + stop + 1) / 2  # mean of start+1 .. stop
        for i in order[start:stop]:
            ranks[i] = rank
        start = stop
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the average ranks; None with fewer than 2
    pairs or when either side is constant."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    mean = (n + 1) / 2  # the mean of average ranks is always (n + 1) / 2
    sxy = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mean) ** 2 for a in rx)
    syy = sum((b - mean) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    rho = sxy / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, rho))


def top_k(ids: Sequence[str], values: Sequence[float], k: int, order: Order) -> set[str]:
    """The k best record ids (desc: highest first), ties broken by record id ascending."""
    sign = -1.0 if order == "desc" else 1.0
    ranked = sorted(range(len(ids)), key=lambda i: (sign * values[i], ids[i]))
    return {ids[i] for i in ranked[:k]}


def _column(
    session: Session,
    blobs: BlobStore,
    score_set_id: str,
    column: str,
    side: str,
    loaded: dict[str, _Values],
) -> dict[str, float]:
    """``record_id -> value`` of one column, records without a value left out; ``loaded``
    keeps the blobs already read (comparing two columns of one set reads it once)."""
    score_set = succeeded_score_set(session, score_set_id, field=f"query.{side}")
    _column_summary(score_set, column, f"query.{side}_column")
    if score_set.id not in loaded:
        loaded[score_set.id] = _values(blobs, score_set)
    values = loaded[score_set.id]
    if column not in values.columns:
        raise Conflict(
            f"score set {score_set_id} lists column {column!r} in its summary but its values "
            "blob has no such column",
            field=f"query.{side}_column",
        )
    return {
        record_id: value
        for record_id, value in zip(values.record_ids, values.columns[column], strict=True)
        if value is not None
    }


def compare(
    session: Session,
    blobs: BlobStore,
    *,
    a: str,
    a_column: str,
    a_order: Order,
    b: str,
    b_column: str,
    b_order: Order,
    k: int,
) -> CompareRead:
    loaded: dict[str, _Values] = {}
    a_values = _column(session, blobs, a, a_column, "a", loaded)
    b_values = _column(session, blobs, b, b_column, "b", loaded)
    common = sorted(a_values.keys() & b_values.keys())
    x = [a_values[r] for r in common]
    y = [b_values[r] for r in common]
    k = min(k, len(common))
    top_a = top_k(common, x, k, a_order)
    top_b = top_k(common, y, k, b_order)
    union = len(top_a | top_b)
    overlap = len(top_a & top_b)
    rho = spearman(x, y)
    if rho is not None and a_order != b_order:  # agreement of the two rankings, not the values
        rho = -rho
    return CompareRead.model_validate(
        {
            "a": {"score_set_id": a, "column": a_column, "order": a_order},
            "b": {"score_set_id": b, "column": b_column, "order": b_order},
            "n_common": len(common),
            "spearman": rho,
            "top_k": {"k": k, "overlap": overlap, "jaccard": overlap / union if union else None},
        }
    )
