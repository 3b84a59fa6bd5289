"""Every dataset query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session

from service.db.models import (
    Curation,
    Dataset,
    FeatureSet,
    Record,
    ScoreSet,
    Study,
    Valuation,
    WarmupRun,
)


def get(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def exists(session: Session, dataset_id: str) -> bool:
    return session.scalar(select(Dataset.id).where(Dataset.id == dataset_id)) is not None


def insert_records(session: Session, rows: list[dict[str, Any]], batch: int = 5000) -> None:
    for start in range(0, len(rows), batch):
        session.execute(insert(Record), rows[start : start + batch])


def subtask_counts(session: Session, dataset_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {i: {} for i in dataset_ids}
    if not dataset_ids:
        return counts
    rows = session.execute(
        select(Record.dataset_id, Record.subtask, func.count())
        .where(Record.dataset_id.in_(dataset_ids), Record.subtask.is_not(None))
        .group_by(Record.dataset_id, Record.subtask)
        .order_by(Record.dataset_id, Record.subtask)
    ).all()
    for dataset_id, subtask, n in rows:
        if subtask is not None:
            counts[dataset_id][subtask] = n
    return counts


def records_page(
    session: Session, dataset_id: str, limit: int, offset: int
) -> tuple[Sequence[Record], int]:
    total = (
        session.scalar(
            select(func.count()).select_from(Record).where(Record.dataset_id == dataset_id)
        )
        or 0
    )
    rows = session.scalars(
        select(Record)
        .where(Record.dataset_id == dataset_id)
        .order_by(Record.position)
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, total


def valuations_using(session: Session, dataset_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Valuation.id)
            .where(
                or_(
                    Valuation.pool_dataset_id == dataset_id,
                    Valuation.probe_dataset_id == dataset_id,
                    Valuation.assist_dataset_id == dataset_id,
                )
            )
            .order_by(Valuation.created_at)
        )
    )


def studies_using(session: Session, dataset_id: str) -> list[str]:
    """Studies that read ``dataset_id`` as their evaluation set or as one of their probe sets
    (kept as JSON, so filtered here)."""
    rows = session.execute(
        select(Study.id, Study.eval_dataset_id, Study.probe_sets).order_by(Study.created_at)
    ).all()
    return [
        study_id
        for study_id, eval_id, probe_sets in rows
        if eval_id == dataset_id or any(p["dataset_id"] == dataset_id for p in probe_sets)
    ]


def score_sets_using(session: Session, dataset_id: str) -> list[str]:
    """Score sets that score ``dataset_id`` or score against it as their probes."""
    return list(
        session.scalars(
            select(ScoreSet.id)
            .where(or_(ScoreSet.dataset_id == dataset_id, ScoreSet.probe_dataset_id == dataset_id))
            .order_by(ScoreSet.created_at)
        )
    )


def curations_using(session: Session, dataset_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Curation.id)
            .where(Curation.dataset_id == dataset_id)
            .order_by(Curation.created_at)
        )
    )


def has_cached_artifacts(session: Session, dataset_id: str) -> bool:
    warmup = select(WarmupRun.id).where(WarmupRun.pool_dataset_id == dataset_id).limit(1)
    features = select(FeatureSet.id).where(FeatureSet.dataset_id == dataset_id).limit(1)
    return session.scalar(warmup) is not None or session.scalar(features) is not None
