"""Every selection query (the selection itself is computed in SQL over ``scores``)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Record, Score, Selection


def get(session: Session, selection_id: str) -> Selection | None:
    return session.get(Selection, selection_id)


def count_scores(session: Session, valuation_id: str) -> int:
    stmt = select(func.count()).select_from(Score).where(Score.valuation_id == valuation_id)
    return session.scalar(stmt) or 0


def record_ids_by_rank(
    session: Session, valuation_id: str, count: int, *, ascending: bool
) -> list[str]:
    """The ``count`` best ranks, best first; ``ascending``: the ``count`` worst, worst first."""
    if ascending:
        where = Score.rank >= count_scores(session, valuation_id) - count
        order = Score.rank.desc()
    else:
        where, order = Score.rank < count, Score.rank
    stmt = select(Score.record_id).where(Score.valuation_id == valuation_id, where).order_by(order)
    return list(session.scalars(stmt))


def record_ids_past(
    session: Session, valuation_id: str, threshold: float, *, ascending: bool
) -> list[str]:
    """Every score >= ``threshold`` best rank first; ``ascending``: every score <= it, worst
    rank first."""
    where = Score.score <= threshold if ascending else Score.score >= threshold
    order = Score.rank.desc() if ascending else Score.rank
    stmt = select(Score.record_id).where(Score.valuation_id == valuation_id, where).order_by(order)
    return list(session.scalars(stmt))


def iter_raw_records(
    session: Session, dataset_id: str, record_ids: list[str], batch: int = 500
) -> Iterator[dict[str, object]]:
    """The ``raw`` JSON of ``record_ids`` in the given order, fetched in batches."""
    for start in range(0, len(record_ids), batch):
        chunk = record_ids[start : start + batch]
        rows = session.execute(
            select(Record.record_id, Record.raw).where(
                Record.dataset_id == dataset_id, Record.record_id.in_(chunk)
            )
        ).all()
        raw_by_id = {record_id: raw for record_id, raw in rows}
        for record_id in chunk:
            if record_id in raw_by_id:
                yield raw_by_id[record_id]
