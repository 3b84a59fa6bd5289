from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.blobs import get_blob_store
from tests.service.conftest import RecordingQueue
from workers.contracts import GPU_QUEUE, VALUATION_FEATURIZE, ValuationTask


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_ok(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "blob_store": "ok"},
        "failing": [],
    }


def test_readyz_names_the_failing_check(
    client: TestClient, app: Any, queue: RecordingQueue
) -> None:
    queue.ping_error = ConnectionError("redis refused")
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"] and "redis refused" in body["checks"]["broker"]
    assert body["checks"]["database"] == "ok"

    class Broken:
        def ping(self) -> None:
            raise PermissionError("read-only bucket")

    queue.ping_error = None
    app.dependency_overrides[get_blob_store] = Broken
    body = client.get("/readyz").json()
    assert body["failing"] == ["blob_store"] and "read-only" in body["checks"]["blob_store"]


def test_broker_ping_and_send_with_memory_transport() -> None:
    from kombu.exceptions import OperationalError

    from service.queue import _make_celery_app, ping_broker

    app = _make_celery_app("memory://")
    ping_broker(app)  # the in-process transport of the embedded default is always reachable
    with pytest.raises(OperationalError):
        ping_broker(_make_celery_app("redis://127.0.0.1:1/0"), timeout_s=1)


def test_enqueue_sends_by_name_to_the_task_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import queue as queue_module

    sent: list[tuple[str, dict[str, Any]]] = []

    tracked: list[tuple[str, str, str, dict[str, Any]]] = []

    def send_task(name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> None:
        sent.append((name, {"kwargs": kwargs, "queue": queue, "task_id": task_id}))

    monkeypatch.setattr(queue_module.celery_app, "send_task", send_task)
    monkeypatch.setattr(queue_module, "track_task", lambda *args: tracked.append(args))
    queue_module.CeleryQueue().enqueue(
        VALUATION_FEATURIZE, ValuationTask(valuation_id="v1"), job_id="j1"
    )
    (task_id, job_id, name, kwargs), *rest = tracked  # written before the message is sent
    assert not rest and (job_id, name, kwargs) == (
        "j1",
        VALUATION_FEATURIZE,
        {"valuation_id": "v1"},
    )
    assert sent == [
        (
            VALUATION_FEATURIZE,
            {"kwargs": {"valuation_id": "v1"}, "queue": GPU_QUEUE, "task_id": task_id},
        )
    ]
    with pytest.raises(ValueError, match="unknown task"):
        queue_module.enqueue("sift.nope", ValuationTask(valuation_id="v1"), job_id="j1")
    conf = queue_module.celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_ignore_result


def test_unknown_route_uses_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = client.put("/v1/datasets")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_errors_and_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Sift"
    paths = spec["paths"]
    assert set(paths["/v1/datasets/{dataset_id}"]["delete"]["responses"]) >= {"204", "404", "409"}
    assert "503" in paths["/v1/valuations"]["post"]["responses"]
    upload = paths["/v1/datasets"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(upload)
    assert upload["application/json"]["example"]["records"]
    schemas = spec["components"]["schemas"]
    for name in ("ModelCreate", "ValuationCreate", "SelectionCreate"):
        assert schemas[name]["examples"], name
    assert "ErrorResponse" in schemas
