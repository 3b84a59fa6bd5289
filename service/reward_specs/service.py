"""Reward-spec rules. No commits here: the endpoint commits."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.models import RewardSpec
from service.errors import Conflict, InvalidInput, NotFound
from service.pagination import Page, Pagination, newest_first
from service.reward_specs.schemas import RewardSpecCreate, RewardSpecRead
from workers.contracts import REWARD_NEEDS_LABEL


def _read(row: RewardSpec) -> RewardSpecRead:
    return RewardSpecRead(
        id=row.id,
        name=row.name,
        kind=row.kind,
        needs_label=REWARD_NEEDS_LABEL[row.kind],
        spec=row.spec,
        created_at=row.created_at,
    )


def create(session: Session, body: RewardSpecCreate, settings: Settings) -> RewardSpecRead:
    spec = body.spec.model_dump()
    if spec["kind"] == "reward_model":
        path = Path(spec["model_path"]).expanduser()
        if not path.is_absolute():
            raise InvalidInput(
                "reward model path must be absolute (workers may run elsewhere)",
                field="spec.model_path",
            )
        if settings.check_model_paths and not (path / "config.json").is_file():
            raise InvalidInput(f"no model with config.json at {path}", field="spec.model_path")
    if session.scalar(select(RewardSpec.id).where(RewardSpec.name == body.name)) is not None:
        raise Conflict(f"a reward spec named {body.name!r} already exists", field="name")
    row = RewardSpec(name=body.name, kind=spec["kind"], spec=spec)
    session.add(row)
    session.flush()
    return _read(row)


def get(session: Session, spec_id: str) -> RewardSpecRead:
    row = session.get(RewardSpec, spec_id)
    if row is None:
        raise NotFound(f"reward spec {spec_id} does not exist")
    return _read(row)


def list_page(session: Session, page: Pagination) -> Page[RewardSpecRead]:
    rows, total = newest_first(session, RewardSpec, page)
    return Page(items=[_read(r) for r in rows], total=total, limit=page.limit, offset=page.offset)
