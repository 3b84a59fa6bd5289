from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from service.auth.dependencies import SessionDep
from service.errors import Conflict, NotFound, error_responses
from service.selections import service
from service.selections.schemas import SelectionCreate, SelectionRead
from service.valuations import service as valuations

router = APIRouter(tags=["selections"])


@router.post(
    "/valuations/{valuation_id}/selections",
    status_code=201,
    response_model=SelectionRead,
    responses=error_responses(NotFound, Conflict),
)
def create_selection(valuation_id: str, body: SelectionCreate, session: SessionDep) -> Any:
    """Select pool records of a succeeded valuation by rank (top_k, top_fraction) or score
    (threshold); ties are already broken by rank."""
    selection = service.create_selection(session, valuation_id, body)
    session.commit()
    return selection


@router.get(
    "/selections/{selection_id}", response_model=SelectionRead, responses=error_responses(NotFound)
)
def get_selection(selection_id: str, session: SessionDep) -> Any:
    return service.get_selection(session, selection_id)


@router.get(
    "/selections/{selection_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "the selected records as uploaded, one JSON object per line",
        },
        **error_responses(NotFound),
    },
)
def export_selection(
    selection_id: str,
    session: SessionDep,
    format: Annotated[str, Query(description="only 'jsonl'")] = "jsonl",
) -> StreamingResponse:
    """Stream the selected records verbatim (``raw``), best rank first."""
    service.check_export_format(format)
    selection = service.get_selection(session, selection_id)
    valuation = valuations.get_valuation(session, selection.valuation_id)
    return StreamingResponse(
        service.export_jsonl(session, valuation.pool_dataset_id, list(selection.record_ids)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="selection-{selection_id}.jsonl"'},
    )
