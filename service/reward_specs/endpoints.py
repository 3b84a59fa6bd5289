from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.auth.dependencies import SessionDep
from service.config import Settings, get_settings
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
