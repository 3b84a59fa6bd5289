"""A task whose execution kills its worker is not re-delivered for ever (production stack).

The poison pill: a reward score set whose judge never answers, and a test that SIGKILLs the
worker each time the task is inside its body (the judge holds its request) and starts a fresh
one — what a record whose program takes the worker down does. Redis hands the unacknowledged
task to each new worker (same task id); after ``SIFT_MAX_TASK_DELIVERIES`` deaths the next
delivery fails the job without running it, and the pool serves the next job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import Stack
from tests.integration.test_valuation_e2e import _records, _upload

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")
TIMEOUT_S = 180.0


class _HangingJudge(BaseHTTPRequestHandler):
    """Holds every request until released: the task stays inside its body until it is killed."""

    seen: list[dict[str, Any]] = []
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.release.wait(TIMEOUT_S)
        payload = b'{"reward": 1.0}'
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the worker that asked is dead
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def hanging_judge() -> Iterator[str]:
    _HangingJudge.seen.clear()
    _HangingJudge.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangingJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/judge"
    finally:
        _HangingJudge.release.set()
        server.shutdown()


def _post_score_set(api: httpx.Client, body: dict[str, Any]) -> str:
    response = api.post("/v1/score-sets", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_poison_pill_fails_its_job_after_bounded_deliveries(
    api: httpx.Client, stack: Stack, hanging_judge: str
) -> None:
    limit = int(stack.env.get("SIFT_MAX_TASK_DELIVERIES", "3"))
    rows = _records("pool.jsonl", per_task=1)[:1]  # one record: one judge request per delivery
    dataset = _upload(api, "poison-pool", rows)
    spec = api.post(
        "/v1/reward-specs",
        json={
            "name": "poison-judge",
            "spec": {"kind": "http_judge", "url": hanging_judge, "timeout_s": 600, "retries": 0},
        },
    )
    assert spec.status_code == 201, spec.text
    score_set_id = _post_score_set(
        api, {"scorer": "reward", "dataset_id": dataset["id"], "reward_spec_id": spec.json()["id"]}
    )
    engine = create_engine(stack.database_url)

    def deliveries() -> list[tuple[str, int]]:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT d.task_name, d.deliveries FROM task_deliveries d "
                    "JOIN score_sets s ON s.job_id = d.job_id WHERE s.id = :id"
                ),
                {"id": score_set_id},
            ).all()
        return [(str(name), int(n)) for name, n in found]

    started = time.monotonic()
    kills = 0
    path = f"/v1/score-sets/{score_set_id}"
    while (state := api.get(path).json())["status"] not in FINISHED:
        assert time.monotonic() - started < TIMEOUT_S, (state, deliveries(), kills)
        counted = deliveries()
        assert len(counted) <= 1, counted  # one task, redelivered under the same id
        n = counted[0][1] if counted else 0
        if n > kills and len(_HangingJudge.seen) > kills:  # delivery n is inside its body
            stack.worker.kill()
            kills = n
            # the broker would wait an hour; the new worker's recovery sweep resends the task
            # once its heartbeat is SIFT_HEARTBEAT_STALE_S old
            stack.worker.start()
        time.sleep(0.2)
    elapsed = time.monotonic() - started

    assert state["status"] == "failed", state
    assert kills == limit and len(_HangingJudge.seen) == limit  # the last delivery ran nothing
    assert deliveries() == [("sift.score_set.run", limit + 1)]
    assert state["error"].startswith(
        f"task sift.score_set.run was delivered {limit + 1} times and its worker died during "
        f"each of the first {limit} (e.g. a record whose program kills the worker)"
    ), state["error"]
    assert "the job is failed so the worker pool stays up" in state["error"]

    # The pool stays up: the same worker process (no restart since) runs an ordinary job.
    worker, starts = stack.worker.proc, stack.worker.starts
    assert worker.poll() is None, "the worker died"
    ordinary = _post_score_set(api, {"scorer": "text", "dataset_id": dataset["id"]})
    deadline = time.monotonic() + TIMEOUT_S
    while (done := api.get(f"/v1/score-sets/{ordinary}").json())["status"] not in FINISHED:
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done["status"] == "succeeded", done["error"]
    assert stack.worker.proc is worker and stack.worker.starts == starts
    assert worker.poll() is None
    assert deliveries() == [("sift.score_set.run", limit + 1)]  # nothing delivered it again
    engine.dispose()
    print(f"poison pill failed after {limit} kills in {elapsed:.1f}s")
