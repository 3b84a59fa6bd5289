from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from service import deletion
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.config import Settings, get_settings
from service.deletion import CascadeQuery
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


@router.delete(
    "/{model_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def delete_model(
    model_id: str, session: SessionDep, blobs: BlobStoreDep, cascade: CascadeQuery = False
) -> Response:
    """Unregister a model (nothing is deleted from its source).

    409 while a valuation, score set or curation uses it, a run of checkpoints was uploaded for
    it, or a study runs on a warmup run it trained: the message names each; delete them first,
    or pass ``cascade=true`` to delete them with it (a queued or running one is cancelled). The
    warmup runs Sift trained on it, their checkpoints and features go with it.
    """
    deleted = deletion.delete_resource(session, "model", model_id, cascade=cascade)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)
