"""Schemathesis over the OpenAPI document, in process: every operation gets generated valid and
invalid requests (examples, coverage and fuzzing phases) from an admin key of tenant team-a,
and every response must pass every check (no server error, a documented status, the
documented content type, headers and schema, invalid data rejected, valid data accepted,
``Allow`` on 405s, auth not ignored). Derandomized, a fixed number of examples per operation:
CI runs the same cases every time, in about a minute.

Each operation runs in its own rolled-back transaction (the ``db`` fixture), so generated
path ids are mostly unknown (404s); ``test_reads_of_existing_resources_conform`` runs the
read operations again with path ids of resources that exist.

More cases locally: ``SIFT_SCHEMATHESIS_EXAMPLES=300 pytest tests/service/test_schemathesis.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from sqlalchemy.orm import Session

from service.auth import keys
from service.config import Settings, get_settings
from service.main import create_app
from tests.service.conftest import finish_valuation, records

EXAMPLES = int(os.environ.get("SIFT_SCHEMATHESIS_EXAMPLES", "25"))

# A schema-valid request may still break a rule no JSON schema states (a referenced dataset
# that does not exist, a model directory on the server, a ``value`` whose range depends on
# ``rule``): Sift answers those 422 naming the field, as it documents.
SEMANTIC_REJECTION = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]

ADMIN_KEY = keys.KEY_PREFIX + "schemathesis-admin-of-team-a"
"""Sent on every generated request (schemathesis strips it again to check that auth is
enforced); a fixed value, as the coverage phase builds its cases at collection."""

CONFIG: dict[str, Any] = {
    "seed": 14,
    "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
    "generation": {"deterministic": True, "max-examples": EXAMPLES, "database": "none"},
    "checks": {"positive_data_acceptance": {"expected-statuses": SEMANTIC_REJECTION}},
    "phases": {"stateful": {"enabled": False}},
}

HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,  # 2 shared CI cores: time per case varies; the file is bounded by count
    database=None,
    suppress_health_check=list(HealthCheck),
)

APP = create_app()
"""The app schemathesis calls; each test gives it the overrides of the ``app`` fixture."""
PAGE_SIZE_MAX = get_settings().page_size_max
"""What the document (loaded below, at collection) says ``limit`` may be; the tests' settings
say the same."""
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", APP, config=schemathesis.Config.from_dict(CONFIG)
)


@pytest.fixture(autouse=True)
def _test_dependencies(app: FastAPI, settings: Settings, db: Session) -> Iterator[None]:
    """The ``app`` fixture's database transaction, queue, blob store and settings, and
    :data:`ADMIN_KEY` as an admin key of tenant team-a in that transaction."""
    page_settings = settings.model_copy(update={"page_size_max": PAGE_SIZE_MAX})
    APP.dependency_overrides = {**app.dependency_overrides, get_settings: lambda: page_settings}
    APP.state.key_cache = None  # ADMIN_KEY's principal (its tenant) is new in each test
    tenant = keys.get_or_create_tenant(db, "team-a")
    row, _ = keys.create_key(db, tenant.id, name="schemathesis", role="admin")
    row.prefix, row.secret_hash = ADMIN_KEY[: keys.SHOWN_PREFIX], keys.hash_key(ADMIN_KEY)
    db.commit()
    yield
    APP.dependency_overrides = {}


@schema.parametrize()
@HYPOTHESIS
def test_api(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_reads_of_existing_resources_conform(db: Session) -> None:
    """Every GET with path ids, on resources that exist: the generated cases above mostly see
    404s, so this is where real 200 bodies meet their documented schemas."""
    with TestClient(APP, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
        pool = _created(client.post("/v1/datasets", json={"name": "p", "records": records(4)}))
        probe = _created(client.post("/v1/datasets", json={"name": "q", "records": records(1)}))
        tiny = {"name": "m", "source": "builtin:tiny-llama"}
        model = _created(client.post("/v1/models", json=tiny))
        spec = _created(
            client.post("/v1/reward-specs", json={"name": "r", "spec": {"kind": "exact_match"}})
        )
        valuation = _created(
            client.post(
                "/v1/valuations",
                json={
                    "model_id": model["id"],
                    "pool_dataset_id": pool["id"],
                    "probe_dataset_id": probe["id"],
                },
            )
        )
        finish_valuation(db, valuation["id"], [(f"r{i}", 1.0 - i / 4) for i in range(4)])
        selection = _created(
            client.post(
                f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": 2}
            )
        )
        score_set = _created(
            client.post("/v1/score-sets", json={"scorer": "text", "dataset_id": pool["id"]})
        )
        evaluation = _created(
            client.post(
                "/v1/evaluations",
                json={
                    "model_id": model["id"],
                    "pool_dataset_id": pool["id"],
                    "target_dataset_id": probe["id"],
                    "budget": 2,
                    "arms": [{"kind": "selection", "selection_id": selection["id"]}],
                },
            )
        )
    ids = {
        "dataset_id": pool["id"],
        "model_id": model["id"],
        "spec_id": spec["id"],
        "valuation_id": valuation["id"],
        "selection_id": selection["id"],
        "score_set_id": score_set["id"],
        "evaluation_id": evaluation["id"],
    }
    called = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err would be a broken document
        names = [p.name for p in operation.path_parameters]
        if operation.method != "get" or not names or not set(names) <= set(ids):
            continue
        query = {"column": "n_chars"} if "distribution" in operation.path else {}
        case = operation.Case(
            path_parameters={name: ids[name] for name in names},
            query=query,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        response = case.call_and_validate()
        called.append((operation.label, response.status_code))
    assert len(called) >= 12, called
    assert sum(status == 200 for _, status in called) >= 9, called


def _created(response: Any) -> Any:
    assert response.status_code in (201, 202), response.text
    return response.json()
