"""Model registration rules. No commits here: the endpoint commits."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.models import Model
from service.errors import Conflict, InvalidInput, NotFound
from service.models import repository
from service.models.schemas import ModelCreate, ModelRead
from service.pagination import Page, Pagination, newest_first
from workers.contracts import BUILTIN_MODELS

GGUF_MAGIC = b"GGUF"
"""First four bytes of every GGUF file (the worker converts it; the API only looks)."""

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def resolve_source(source: str, settings: Settings) -> str:
    """Validate ``source``; local paths come back absolute (workers may run elsewhere)."""
    if source.startswith("builtin:"):
        if source not in BUILTIN_MODELS:
            known = ", ".join(sorted(BUILTIN_MODELS))
            raise InvalidInput(f"unknown builtin model {source!r}; known: {known}", field="source")
        return source
    if source.startswith(("/", ".", "~")):
        try:
            path = Path(source).expanduser().absolute()
        except RuntimeError as exc:  # "~name" of a user this machine does not have
            raise InvalidInput(f"cannot resolve {source!r}: {exc}", field="source") from exc
        if settings.check_model_paths:
            _check_local_model(path)
        return os.path.normpath(path)
    if not HUB_ID.match(source) or ".." in source:
        raise InvalidInput(
            f"source {source!r} is neither 'builtin:<name>', a local path (starting with '/', "
            "'.' or '~') nor a hub id 'org/name'",
            field="source",
        )
    return source


def _check_local_model(path: Path) -> None:
    """A Hugging Face folder (``config.json``), a GGUF file, or a folder holding exactly one
    GGUF file (converted to safetensors by the worker on first use: nothing is loaded here)."""
    if path.is_file():
        if not path.name.lower().endswith(".gguf"):
            raise InvalidInput(
                f"model file {path} is not a .gguf file (give a GGUF file or a folder with "
                "config.json)",
                field="source",
            )
        _check_gguf_magic(path)
        return
    if not path.is_dir():
        raise InvalidInput(f"model directory {path} does not exist", field="source")
    if (path / "config.json").is_file():
        return
    ggufs = sorted(p for p in path.iterdir() if p.name.lower().endswith(".gguf"))
    if not ggufs:
        raise InvalidInput(
            f"model directory {path} has no config.json and no .gguf file", field="source"
        )
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise InvalidInput(
            f"model directory {path} holds {len(ggufs)} GGUF files ({names}); name one",
            field="source",
        )
    _check_gguf_magic(ggufs[0])


def _check_gguf_magic(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise InvalidInput(
            f"cannot read model file {path}: {exc.strerror}", field="source"
        ) from exc
    if head != GGUF_MAGIC:
        raise InvalidInput(f"model file {path} is not a GGUF file", field="source")


def create_model(session: Session, body: ModelCreate, settings: Settings) -> Model:
    source = resolve_source(body.source, settings)
    if repository.get_by_name(session, body.name) is not None:
        raise Conflict(f"a model named {body.name!r} already exists", field="name")
    model = Model(name=body.name, source=source)
    session.add(model)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # a concurrent request took the name
        raise Conflict(f"a model named {body.name!r} already exists", field="name") from None
    return model


def get_model(session: Session, model_id: str) -> Model:
    model = repository.get(session, model_id)
    if model is None:
        raise NotFound(f"model {model_id} not found", field="model_id")
    return model


def list_models(session: Session, page: Pagination) -> Page[ModelRead]:
    rows, total = newest_first(session, Model, page)
    return Page(
        items=[ModelRead.model_validate(m) for m in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )
