"""Every warmup-run query."""

from __future__ import annotations

from sqlalchemy import select
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
