from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from service import deletion, jobs
from service.auth.dependencies import SessionDep
from service.curations import service
from service.curations.schemas import CurationCreate, CurationRead
from service.errors import Conflict, NotFound, ServiceUnavailable, error_responses
from service.pagination import Page, PaginationDep
from service.queue import QueueDep
from service.selections import service as selections
from service.selections.schemas import ExportFormat
from service.webhooks.callbacks import SettingsDep, attach_callback
from workers.contracts import CURATION_RUN, CurationTask

router = APIRouter(prefix="/curations", tags=["curations"])


@router.post(
    "", status_code=202, response_model=CurationRead, responses=error_responses(ServiceUnavailable)
)
def create_curation(
    body: CurationCreate, session: SessionDep, queue: QueueDep, settings: SettingsDep
) -> Any:
    """Compose score sets into a selection: keep the records passing every filter (thresholds,
    eq. 4; percentiles, eq. 5), then rank them by a score or pick with a diversity algorithm,
    at most ``quota.max_per_group`` per group, up to the budget."""
    curation = service.create_curation(session, body)
    attach_callback(session, curation.job_id, body.callback_url, settings)
    session.commit()
    jobs.enqueue_committed(
        session,
        queue,
        CURATION_RUN,
        CurationTask(curation_id=curation.id),
        curation.job,
        noun="curation",
        resource_id=curation.id,
    )
    return service.to_read(curation)


@router.get("", response_model=Page[CurationRead])
def list_curations(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_curations(session, page)


@router.get("/{curation_id}", response_model=CurationRead, responses=error_responses(NotFound))
def get_curation(curation_id: str, session: SessionDep) -> Any:
    return service.to_read(service.get_curation(session, curation_id))


@router.delete(
    "/{curation_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound),
)
def delete_curation(curation_id: str, session: SessionDep) -> Response:
    """Delete a curation with its job; a queued or running one is cancelled by this. Its
    score sets and dataset stay."""
    deletion.delete_resource(session, "curation", curation_id)
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{curation_id}/cancel",
    status_code=202,
    response_model=CurationRead,
    responses=error_responses(NotFound, Conflict),
)
def cancel_curation(curation_id: str, session: SessionDep) -> Any:
    curation = service.cancel_curation(session, curation_id)
    session.commit()
    return service.to_read(curation)


@router.get(
    "/{curation_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "the selected records as uploaded, one JSON object per line",
        },
        **error_responses(NotFound, Conflict),
    },
)
def export_curation(
    curation_id: str,
    session: SessionDep,
    format: Annotated[ExportFormat, Query(description="only 'jsonl'")] = "jsonl",
) -> StreamingResponse:
    """Stream the selected records verbatim, in pick order; 409 until the curation succeeded."""
    curation = service.get_curation(session, curation_id)
    record_ids = service.require_succeeded(curation)
    return StreamingResponse(
        selections.export_jsonl(session, curation.dataset_id, record_ids),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="curation-{curation_id}.jsonl"'},
    )
