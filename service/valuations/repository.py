"""Every valuation, job and score query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from service import jobs
from service.db.models import Score, Valuation


def get(session: Session, valuation_id: str, *, for_update: bool = False) -> Valuation | None:
    stmt = select(Valuation).where(Valuation.id == valuation_id)
    valuation = session.scalar(stmt)
    if valuation is not None and for_update:
        jobs.lock(session, valuation.job_id)
    return valuation


def scores_page(
    session: Session, valuation_id: str, limit: int, offset: int
) -> tuple[Sequence[Row[int, str, float, dict[str, float]]], int]:
    """One page of scores by rank, as column rows (no ORM objects: a page is read-only, and
    building a hundred instances cost more than the rest of the request), and the total."""
    total = (
        session.scalar(
            select(func.count()).select_from(Score).where(Score.valuation_id == valuation_id)
        )
        or 0
    )
    rows = session.execute(
        select(Score.rank, Score.record_id, Score.score, Score.per_subtask)
        .where(Score.valuation_id == valuation_id)
        .order_by(Score.rank)
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, total
