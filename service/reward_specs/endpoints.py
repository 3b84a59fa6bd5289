from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from service import deletion
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.config import Settings, get_settings
from service.deletion import CascadeQuery
from service.errors import Conflict, NotFound, error_responses
from service.pagination import Page, PaginationDep
from service.reward_specs import service
from service.reward_specs.schemas import RewardSpecCreate, RewardSpecRead

router = APIRouter(prefix="/reward-specs", tags=["reward specs"])


@router.post(
    "", status_code=201, response_model=RewardSpecRead, responses=error_responses(Conflict)
)
def create_reward_spec(
    body: RewardSpecCreate,
    session: SessionDep,
    settings: Annotated[Settings, Depends(get_settings)],
) -> Any:
    """Define how sampled responses to probe prompts are rewarded (NICE valuations).

    Kinds: exact_match, contains, regex, numeric (compare with the probe's label); python_tests
    (HumanEval-style, sandboxed), reward_model (a local sequence-classification model) and
    http_judge (POST to an endpoint), which need no label.
    """
    spec = service.create(session, body, settings)
    session.commit()
    return spec


@router.get("", response_model=Page[RewardSpecRead])
def list_reward_specs(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_page(session, page)


@router.get("/{spec_id}", response_model=RewardSpecRead, responses=error_responses(NotFound))
def get_reward_spec(spec_id: str, session: SessionDep) -> Any:
    return service.get(session, spec_id)


@router.delete(
    "/{spec_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def delete_reward_spec(
    spec_id: str, session: SessionDep, blobs: BlobStoreDep, cascade: CascadeQuery = False
) -> Response:
    """Delete a reward spec and its sealed headers.

    409 while a valuation or score set uses it: the message names each; delete them first, or
    pass ``cascade=true`` to delete them with it (a queued or running one is cancelled).
    """
    deleted = deletion.delete_resource(session, "reward_spec", spec_id, cascade=cascade)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)
