"""``/metrics`` counts requests by route template and status; request ids reach the client and
the log records; the log formats (plain and JSON) carry the same fields."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from service.config import Settings
from service.observability import (
    HANDLER_NAME,
    close_log_scope,
    configure_logging,
    make_handler,
    open_log_scope,
)
from tests.service.conftest import RecordingQueue

DATASET = "/v1/datasets/{dataset_id}"


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (sample name, sorted labels) → value."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    """Root log records at DEBUG, as the JSON handler writes them."""
    stream = io.StringIO()
    handler = make_handler("json", stream=stream)
    handler.set_name("test-json")  # not Sift's own: configure_logging leaves it alone
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    before = scrape(client)
    ids = [uuid.uuid4().hex, uuid.uuid4().hex]
    for dataset_id in ids:
        assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert client.get("/v1/datasets").status_code == 200
    response = client.get("/metrics")
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("sift_http_requests_total", method="GET", route=DATASET, status="404") == 2
    assert delta("sift_http_requests_total", method="GET", route="/v1/datasets", status="200") == 1
    assert delta("sift_http_request_duration_seconds_count", method="GET", route=DATASET) == 2
    bucket = {"method": "GET", "route": DATASET, "le": "+Inf"}
    assert delta("sift_http_request_duration_seconds_bucket", **bucket) == 2
    assert not any(i in response.text for i in ids)  # ids never become label values


def test_every_route_is_counted_under_its_full_template(anonymous: TestClient) -> None:
    """All routes of the document, each called once with made-up ids (401, 415 or 422 is
    fine: routing happened), land in the series of their own template."""
    paths = anonymous.get("/openapi.json").json()["paths"]
    called = []
    for template, operations in paths.items():
        method = next(m for m in ("get", "post", "put", "patch", "delete") if m in operations)
        anonymous.request(method.upper(), re.sub(r"\{[^}]+\}", "id-1", template))
        called.append((method.upper(), template))
    series = [
        dict(labels) for name, labels in scrape(anonymous) if name == "sift_http_requests_total"
    ]
    counted = {(labels["method"], labels["route"]) for labels in series}
    assert len(called) >= 40
    assert [c for c in called if c not in counted] == []


def test_unknown_paths_and_methods_share_one_series(anonymous: TestClient) -> None:
    before = scrape(anonymous)
    assert anonymous.get(f"/no/such/{uuid.uuid4().hex}").status_code == 404
    assert anonymous.request("BREW", "/healthz").status_code == 405
    after = scrape(anonymous)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert sample(after, "sift_http_requests_total", **labels) == (
        sample(before, "sift_http_requests_total", **labels) + 1
    )
    labels = {"method": "other", "route": "/healthz", "status": "405"}
    assert sample(after, "sift_http_requests_total", **labels) == (
        sample(before, "sift_http_requests_total", **labels) + 1
    )


def test_an_unhandled_exception_is_a_counted_500_with_a_request_id(app: FastAPI) -> None:
    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-boom/{thing}", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        before = scrape(client)
        response = client.get("/test-boom/x1", headers={"x-request-id": "boom-1"})
        after = scrape(client)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    route = {"method": "GET", "route": "/test-boom/{thing}"}
    assert sample(after, "sift_http_requests_total", **route, status="500") == (
        sample(before, "sift_http_requests_total", **route, status="500") + 1
    )
    assert sample(after, "sift_http_exceptions_total", **route, exception="RuntimeError") == (
        sample(before, "sift_http_exceptions_total", **route, exception="RuntimeError") + 1
    )


def test_metrics_need_the_token_when_one_is_set(anonymous: TestClient, settings: Settings) -> None:
    settings.metrics_token = SecretStr("scrape-me")
    denied = anonymous.get("/metrics")
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "unauthorized"
    wrong = anonymous.get("/metrics", headers={"authorization": "Bearer scrape-you"})
    assert wrong.status_code == 401
    ok = anonymous.get("/metrics", headers={"authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "sift_http_requests_total" in ok.text


def test_metrics_is_outside_the_api_and_its_document(anonymous: TestClient) -> None:
    assert anonymous.get("/metrics").status_code == 200  # no API key, like /healthz
    assert "/metrics" not in anonymous.get("/openapi.json").json()["paths"]


def test_a_well_formed_request_id_round_trips(anonymous: TestClient) -> None:
    given = "0af7651916cd43dd8448eb211c80319c"
    assert anonymous.get("/healthz", headers={"x-request-id": given}).headers["x-request-id"] == (
        given
    )
    made = [anonymous.get("/healthz").headers["x-request-id"] for _ in range(2)]
    assert made[0] != made[1] and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made)
    for forged in ('a" "level": "ERROR', "x" * 129, "-leading-dash", "a b"):
        echoed = anonymous.get("/healthz", headers={"x-request-id": forged}).headers
        assert re.fullmatch(r"[0-9a-f]{32}", echoed["x-request-id"]), forged


def test_the_request_id_is_in_json_log_records(
    anonymous: TestClient, queue: RecordingQueue, log_lines: io.StringIO
) -> None:
    queue.ping_error = ConnectionError("broker down")
    response = anonymous.get("/readyz", headers={"x-request-id": "req-42"})
    assert response.status_code == 503 and response.headers["x-request-id"] == "req-42"
    logged = records(log_lines)
    # from inside the endpoint, which runs in a worker thread: the context went with it
    warning = next(r for r in logged if r["logger"] == "service.health")
    assert warning["level"] == "WARNING" and warning["request_id"] == "req-42"
    assert warning["message"].startswith("readiness check broker failed")
    access = next(r for r in logged if r["logger"] == "sift.access")
    assert access["request_id"] == "req-42"
    assert (access["method"], access["path"], access["route"], access["status"]) == (
        "GET",
        "/readyz",
        "/readyz",
        503,
    )
    assert access["duration_ms"] >= 0 and access["time"].endswith("+00:00")
    logging.getLogger("tests").info("after the request")
    assert "request_id" not in records(log_lines)[-1]  # the scope ended with the request


def test_the_access_line_names_the_route_template(
    client: TestClient, log_lines: io.StringIO
) -> None:
    dataset_id = uuid.uuid4().hex
    client.get(f"/v1/datasets/{dataset_id}", headers={"x-request-id": "r-7"})
    access = [r for r in records(log_lines) if r["logger"] == "sift.access"]
    assert [(a["route"], a["path"], a["status"], a["level"]) for a in access] == [
        (DATASET, f"/v1/datasets/{dataset_id}", 404, "INFO")
    ]


def test_the_access_line_keeps_the_path_percent_encoded(
    anonymous: TestClient, log_lines: io.StringIO
) -> None:
    anonymous.get("/no/such%0A2026-12-01 ERROR forged")
    (access,) = [r for r in records(log_lines) if r["logger"] == "sift.access"]
    assert access["path"] == "/no/such%0A2026-12-01%20ERROR%20forged"
    assert access["route"] == "unmatched" and "\n" not in access["message"]


@pytest.fixture()
def root_logging() -> Iterator[logging.Logger]:
    """The root logger (and uvicorn's), restored after the test."""
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    root = logging.getLogger()
    saved = [
        (lg, lg.handlers[:], lg.level, lg.propagate)
        for lg in (root, *map(logging.getLogger, names))
    ]
    try:
        yield root
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def test_configure_logging_plain_and_json_carry_the_same_fields(
    root_logging: logging.Logger,
) -> None:
    lines: dict[str, str] = {}
    for log_format in ("plain", "json"):
        stream = io.StringIO()
        assert configure_logging(log_format, "INFO", stream=stream, force=True)
        assert [h.get_name() for h in root_logging.handlers].count(HANDLER_NAME) == 1
        token = open_log_scope(task_id="t-1", task_name="sift.test", job_id="j-9")
        try:
            logging.getLogger("workers.test").info("shard %d done", 3)
            logging.getLogger("workers.test").debug("below the level")
        finally:
            close_log_scope(token)
        lines[log_format] = stream.getvalue()
    plain = lines["plain"].strip()
    assert plain.endswith(
        "INFO workers.test: shard 3 done [task_id=t-1 task_name=sift.test job_id=j-9]"
    )
    record = json.loads(lines["json"])
    assert {k: record[k] for k in ("level", "logger", "message", "task_id", "job_id")} == {
        "level": "INFO",
        "logger": "workers.test",
        "message": "shard 3 done",
        "task_id": "t-1",
        "job_id": "j-9",
    }
    assert "log_context" not in record


def test_configure_logging_leaves_a_process_configured_by_someone_else_alone(
    root_logging: logging.Logger,
) -> None:
    foreign = logging.StreamHandler(io.StringIO())
    root_logging.handlers[:] = [foreign]
    assert not configure_logging("json", "DEBUG")
    assert root_logging.handlers == [foreign]
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = [logging.StreamHandler(io.StringIO())]
    uvicorn_access.propagate = False
    root_logging.handlers[:] = []
    assert configure_logging("json", "DEBUG", stream=io.StringIO())
    assert root_logging.level == logging.DEBUG
    assert uvicorn_access.handlers == [] and uvicorn_access.propagate  # through our handler
    assert uvicorn_access.level == logging.WARNING  # sift.access replaces its lines


def test_the_live_gauges_of_a_dead_api_process_stop_counting(tmp_path: Path) -> None:
    """Several API processes share samples through files; one killed without its lifespan's
    cleanup (SIGKILL) must not leave its in-progress gauge counted forever."""
    from service.observability import _forget_dead_processes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = os.getpid()
    for pid in (dead.pid, mine):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    _forget_dead_processes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"counter_{mine}.db", f"gauge_livesum_{mine}.db"]
    )  # a dead process's counts stay (they happened), its live gauges go
