"""Every warmup-run query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.db.models import WarmupRun


def get(session: Session, run_id: str) -> WarmupRun | None:
    return session.scalar(
        select(WarmupRun).where(WarmupRun.id == run_id).options(selectinload(WarmupRun.checkpoints))
    )


def get_by_content_key(session: Session, content_key: str) -> WarmupRun | None:
    return session.scalar(
        select(WarmupRun)
        .where(WarmupRun.content_key == content_key)
        .options(selectinload(WarmupRun.checkpoints))
    )


def list_page(session: Session, limit: int, offset: int) -> tuple[Sequence[WarmupRun], int]:
    total = session.scalar(select(func.count()).select_from(WarmupRun)) or 0
    rows = session.scalars(
        select(WarmupRun)
        .options(selectinload(WarmupRun.checkpoints))
        .order_by(WarmupRun.created_at.desc(), WarmupRun.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, total
