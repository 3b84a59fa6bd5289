from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from service import deletion
from service.auth.dependencies import SessionDep
from service.errors import Conflict, NotFound, error_responses
from service.selections import service
from service.selections.schemas import ExportFormat, SelectionCreate, SelectionRead
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
    (threshold); ties are already broken by rank. ``order`` "asc" takes the lowest scores
    (e.g. the least self-influence), worst rank first."""
    selection = service.create_selection(session, valuation_id, body)
    session.commit()
    return selection


@router.get(
    "/selections/{selection_id}", response_model=SelectionRead, responses=error_responses(NotFound)
)
def get_selection(selection_id: str, session: SessionDep) -> Any:
    return service.get_selection(session, selection_id)


@router.delete(
    "/selections/{selection_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound),
)
def delete_selection(selection_id: str, session: SessionDep) -> Response:
    """Delete a selection (its valuation and the records stay)."""
    deletion.delete_resource(session, "selection", selection_id)
    session.commit()
    return Response(status_code=204)


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
    format: Annotated[ExportFormat, Query(description="only 'jsonl'")] = "jsonl",
) -> StreamingResponse:
    """Stream the selected records verbatim (``raw``), best rank first."""
    selection = service.get_selection(session, selection_id)
    valuation = valuations.get_valuation(session, selection.valuation_id)
    return StreamingResponse(
        service.export_jsonl(session, valuation.pool_dataset_id, list(selection.record_ids)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="selection-{selection_id}.jsonl"'},
    )
