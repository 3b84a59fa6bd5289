"""Every model query."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Model


def get(session: Session, model_id: str) -> Model | None:
    return session.get(Model, model_id)


def get_by_name(session: Session, name: str) -> Model | None:
    return session.scalar(select(Model).where(Model.name == name))


def exists(session: Session, model_id: str) -> bool:
    return session.scalar(select(Model.id).where(Model.id == model_id)) is not None
