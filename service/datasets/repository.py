"""Every dataset query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from service.db.models import Dataset, Record


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
    session: Session,
    dataset_id: str,
    limit: int,
    offset: int,
    record_ids: Sequence[str] | None = None,
) -> tuple[Sequence[Record], int]:
    """One page of a dataset's records in ``position`` order, and how many there are; with
    ``record_ids``, only the records with those ids (ids the dataset lacks are left out)."""
    where = [Record.dataset_id == dataset_id]
    if record_ids is not None:
        where.append(Record.record_id.in_(set(record_ids)))
    total = session.scalar(select(func.count()).select_from(Record).where(*where)) or 0
    rows = session.scalars(
        select(Record).where(*where).order_by(Record.position).limit(limit).offset(offset)
    ).all()
    return rows, total
