from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.auth.dependencies import SessionDep
from service.config import Settings, get_settings
from service.errors import Conflict, NotFound, error_responses
from service.models import service
from service.models.schemas import ModelCreate, ModelRead
from service.pagination import Page, PaginationDep

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, response_model=ModelRead, responses=error_responses(Conflict))
def create_model(
    body: ModelCreate, session: SessionDep, settings: Annotated[Settings, Depends(get_settings)]
) -> Any:
    """Register a model to value data with (nothing is downloaded or loaded here)."""
    model = service.create_model(session, body, settings)
    session.commit()
    return model


@router.get("", response_model=Page[ModelRead])
def list_models(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_models(session, page)


@router.get("/{model_id}", response_model=ModelRead, responses=error_responses(NotFound))
def get_model(model_id: str, session: SessionDep) -> Any:
    return service.get_model(session, model_id)
