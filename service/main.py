"""The FastAPI application: ``create_app()`` and the module-level ``app``.

Importing this module connects to nothing; the database, broker and blob store are reached on
first use. It never imports torch (``tests/service/test_no_torch.py`` holds it to that).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from service import health
from service.auth.dependencies import get_principal
from service.auth.endpoints import router as keys_router
from service.config import get_settings
from service.curations.endpoints import router as curations_router
from service.datasets.endpoints import router as datasets_router
from service.errors import (
    Forbidden,
    ServiceUnavailable,
    Unauthorized,
    document_unsupported_media_type,
    error_responses,
    install_error_handlers,
)
from service.evaluations.endpoints import router as evaluations_router
from service.integrations.label_studio_backend import router as label_studio_router
from service.limits import install_limits
from service.models.endpoints import router as models_router
from service.observability import install_observability
from service.pagination import document_page_size
from service.request_text import check_request_text
from service.reward_specs.endpoints import router as reward_specs_router
from service.score_sets.endpoints import router as score_sets_router
from service.selections.endpoints import router as selections_router
from service.studies.endpoints import router as studies_router
from service.tenant_secrets.endpoints import router as secrets_router
from service.ui import mount_ui
from service.valuations.endpoints import router as valuations_router
from service.warmup_runs.endpoints import router as warmup_runs_router
from service.webhooks.endpoints import router as webhooks_router

API_PREFIX = "/v1"

DESCRIPTION = """\
Sift values instruction-tuning data: which pool records most help a target task (LESS-style
gradient influence). Upload a pool and a probe dataset, register a model, start a valuation,
then read ranked scores and export a selection. Runs of LoRA checkpoints (a valuation's warmup,
or adapters trained elsewhere and uploaded as safetensors) are under `/v1/warmup-runs`; a
strategy study (`/v1/studies`) asks whether a data-creation strategy's probe sets move an
evaluation set across those checkpoints (RelInf, s_in / s_cross, verdicts and plots). Score
sets (`/v1/score-sets`) hold per-record scores of the seed 003 toolbox (model quality and IFD,
text statistics, knn distance, random / BM25 / DSIR / RDS importance against probes), with
distributions and rank comparisons between them. An evaluation (`/v1/evaluations`) fine-tunes
LoRA on each of several training sets of one budget (a selection, a curation, a score set's top
k, random k, the full pool) and measures a held-out target set: does training on your
selection help?

Every `/v1` route needs an API key, `Authorization: Bearer sift_...`: a missing or revoked
key is a 401, a role that may not act a 403 (read_only keys only read; only admin keys manage
keys). Every resource belongs to the key's tenant: another tenant's resource is a 404.

Errors have one shape: `{"error": {"code", "message", "field"}}`.
"""


def create_app() -> FastAPI:
    app = FastAPI(title="Sift", version="0.1.0", description=DESCRIPTION)
    install_error_handlers(app)
    install_observability(app)  # /metrics, request ids, access log
    install_limits(app)  # at most SIFT_MAX_CONCURRENT_REQUESTS at once, else a quick 503
    v1 = APIRouter(
        prefix=API_PREFIX,
        dependencies=[Depends(get_principal), Depends(check_request_text)],
        responses=error_responses(Unauthorized, Forbidden, ServiceUnavailable),
    )
    for router in (
        keys_router,
        secrets_router,
        datasets_router,
        models_router,
        reward_specs_router,
        valuations_router,
        selections_router,
        studies_router,
        score_sets_router,
        curations_router,
        evaluations_router,
        warmup_runs_router,
        webhooks_router,
    ):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(label_studio_router)  # Label Studio ML backend: Bearer or Basic key
    app.include_router(health.router)
    mount_ui(app)  # the web view at /ui: static files that call /v1 with an API key

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus what no single route can declare: this deployment's page
        size limit, and the 415 that every JSON body route answers."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            settings = app.dependency_overrides.get(get_settings, get_settings)()
            document_page_size(document, settings.page_size_max)
            document_unsupported_media_type(document)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
