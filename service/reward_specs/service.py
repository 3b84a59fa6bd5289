"""Reward-spec rules. No commits here: the endpoint commits.

An http_judge's ``headers`` (e.g. ``Authorization: Bearer ...``) are write-only: their values
are sealed into ``secret_headers`` (``service.secrets``) and the stored and returned spec names
the headers with the value ``<redacted>``; only the worker that calls the judge opens them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import secrets
from service.config import Settings
from service.db.models import RewardSpec
from service.errors import Conflict, InvalidInput, NotFound
from service.pagination import Page, Pagination, newest_first
from service.reward_specs.schemas import RewardSpecCreate, RewardSpecRead
from workers.contracts import REWARD_NEEDS_LABEL
from workers.outbound import OutboundRefused, check_url


def _read(row: RewardSpec) -> RewardSpecRead:
    return RewardSpecRead(
        id=row.id,
        name=row.name,
        kind=row.kind,
        needs_label=REWARD_NEEDS_LABEL[row.kind],
        spec=_redacted(row.spec),
        created_at=row.created_at,
    )


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as clients see it: header names, never their values (older rows included)."""
    if not spec.get("headers"):
        return spec
    return {**spec, "headers": {name: secrets.REDACTED for name in spec["headers"]}}


def create(session: Session, body: RewardSpecCreate, settings: Settings) -> RewardSpecRead:
    spec = body.spec.model_dump()
    sealed = None
    if spec.get("headers"):
        sealed = secrets.seal(json.dumps(spec["headers"]), settings)
        spec["headers"] = {name: secrets.REDACTED for name in spec["headers"]}
    if spec["kind"] == "http_judge":  # the worker calls it: same rules as workers.outbound
        try:
            check_url(spec["url"], settings.outbound_policy())
        except OutboundRefused as exc:
            raise InvalidInput(f"judge url refused: {exc}", field="spec.url") from exc
    if spec["kind"] == "reward_model":
        try:
            path = Path(spec["model_path"]).expanduser()
        except RuntimeError as exc:  # "~name" of a user this machine does not have
            raise InvalidInput(
                f"cannot resolve {spec['model_path']!r}: {exc}", field="spec.model_path"
            ) from exc
        if not path.is_absolute():
            raise InvalidInput(
                "reward model path must be absolute (workers may run elsewhere)",
                field="spec.model_path",
            )
        if settings.check_model_paths and not (path / "config.json").is_file():
            raise InvalidInput(f"no model with config.json at {path}", field="spec.model_path")
    if session.scalar(select(RewardSpec.id).where(RewardSpec.name == body.name)) is not None:
        raise Conflict(f"a reward spec named {body.name!r} already exists", field="name")
    row = RewardSpec(name=body.name, kind=spec["kind"], spec=spec, secret_headers=sealed)
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
