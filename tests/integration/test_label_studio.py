"""Sift and a real Label Studio: push a valuation's pool into a project, connect Sift as the
project's ML backend (Basic auth, a read_only key), have Label Studio retrieve predictions and
read them back (their scores are the valuation's), annotate through Label Studio's API and pull
the annotations back as a Sift dataset.

Label Studio runs from its own virtualenv (its pins clash with Sift's: label-studio-sdk holds
numpy < 2.3 through opencv): ``SIFT_LABEL_STUDIO`` is the path of its ``label-studio``
executable, default ``label-studio`` on PATH, else ``/tmp/ls-venv/bin/label-studio``; the test
is skipped when there is none and ``SIFT_LABEL_STUDIO`` is unset (set, it must exist; under
``CI=true`` a missing one fails). The push / connect / pull client runs with that
virtualenv's python (it has the SDK, and httpx and pydantic: all that Sift's client,
``service.client``, imports): ``python -m service.integrations.cli``. Label
Studio keeps its SQLite database in a temporary folder, listens on loopback and is told not to
call out (version check, analytics).

Sift is the embedded default (``sift serve``: SQLite, in-process worker, builtin tiny model),
as tests/integration/test_embedded_default.py starts it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.integrations.label_studio import DEFAULT_LABEL_CONFIG
from tests.embedded import VALUATION_SETTINGS, embedded_sift, finished, start_valuation
from tests.integration.servers import _process, free_port, wait_for
from tests.integration.test_valuation_e2e import _jsonl, _records

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEFAULT_EXECUTABLE = "/tmp/ls-venv/bin/label-studio"
LS_TOKEN = "sift-integration-token-0123456789abcdef"
LS_USER = "admin@sift.test"


def label_studio_executable() -> Path:
    given = os.environ.get("SIFT_LABEL_STUDIO")
    if given:
        path = Path(given)
        assert path.is_file(), f"SIFT_LABEL_STUDIO={given} does not exist"
        return path
    found = shutil.which("label-studio") or (
        DEFAULT_EXECUTABLE if Path(DEFAULT_EXECUTABLE).is_file() else None
    )
    if found is None:
        why = (
            "no Label Studio: set SIFT_LABEL_STUDIO to its label-studio executable "
            "(python3 -m venv /tmp/ls-venv && /tmp/ls-venv/bin/pip install label-studio)"
        )
        if os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a failure
            pytest.fail(why)
        pytest.skip(why)
    return Path(found)


def _clean_env() -> dict[str, str]:
    drop = ("SIFT_", "AWS_", "LABEL_STUDIO_", "DJANGO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("HOST", None)  # Label Studio reads HOST as its public URL
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    seen: dict[str, float] = {}
    yield seen
    print("\nlabel studio integration timings (s): " + json.dumps(seen), file=sys.stderr)


def _start_label_studio(
    stack: ExitStack, root: Path, executable: Path, timings: dict[str, float]
) -> tuple[str, float]:
    port = free_port()
    env = _clean_env() | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "ls-data"),
        "LABEL_STUDIO_USERNAME": LS_USER,
        "LABEL_STUDIO_PASSWORD": "sift-integration-password",
        "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # `Authorization: Token <token>`
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Sift listens on loopback: Label Studio blocks local addresses for ML backends, and
        # for the webhook it adds with each backend (SSRF protection), unless told not to
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_TIMEOUT_HEALTH": "10",  # defaults 1 s and 3 s: too short on 2 shared CI cores
        "ML_TIMEOUT_SETUP": "10",
        "ML_CONNECTION_TIMEOUT": "5",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "DEBUG": "false",
    }
    cmd = [
        str(executable),
        "start",
        "--no-browser",
        "--host",
        "127.0.0.1",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    started = time.monotonic()
    stack.enter_context(_process(cmd, root / "label-studio.log", env=env, cwd=root))
    return f"http://127.0.0.1:{port}", started


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]
) -> Iterator[dict[str, Any]]:
    """Label Studio and Sift, started side by side; Sift with one finished valuation."""
    executable = label_studio_executable()
    root = tmp_path_factory.mktemp("label-studio")
    with ExitStack() as stack:
        ls_url, ls_started = _start_label_studio(stack, root, executable, timings)
        sift_started = time.monotonic()
        embedded = stack.enter_context(
            embedded_sift(root, base_env=_clean_env(), log="sift.log", timeout=120, tail=4000)
        )
        timings["sift_ready"] = round(time.monotonic() - sift_started, 1)
        sift_url, key = embedded.url, embedded.api_key
        sift = stack.enter_context(embedded.client(timeout=120))
        valuation_started = time.monotonic()
        valuation, pool = _value_a_pool(sift, root)
        timings["sift_valuation"] = round(time.monotonic() - valuation_started, 1)
        try:
            wait_for(
                lambda: httpx.get(f"{ls_url}/health", timeout=5).raise_for_status(),
                "label studio",
                240,
            )
        except RuntimeError:
            raise AssertionError(_log_tail(root / "label-studio.log")) from None
        timings["label_studio_ready"] = round(time.monotonic() - ls_started, 1)
        ls = stack.enter_context(
            httpx.Client(
                base_url=ls_url, timeout=120, headers={"authorization": f"Token {LS_TOKEN}"}
            )
        )
        assert ls.get("/api/current-user/whoami").json()["email"] == LS_USER
        yield {
            "root": root,
            "executable": executable,
            "sift_url": sift_url,
            "sift_key": key,
            "sift": sift,
            "ls_url": ls_url,
            "ls": ls,
            "valuation": valuation,
            "pool": pool,
        }


def _value_a_pool(sift: httpx.Client, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    pool_file = _jsonl(_records("pool.jsonl", per_task=4))
    vid, pool = start_valuation(sift, pool_file, _records("probes.jsonl"), VALUATION_SETTINGS)
    body = finished(sift, vid, timeout=400)
    assert body["status"] == "succeeded", (body, _log_tail(root / "sift.log"))
    return body, pool


def _cli(servers: dict[str, Any], *args: str, key_file: bool = False) -> Any:
    """``python -m service.integrations.cli`` with Label Studio's python (it has the SDK).
    ``key_file``: no SIFT_API_KEY; the client finds the key ``sift serve`` wrote to
    ``.sift/api-key`` (the working directory is Sift's)."""
    python = servers["executable"].parent / "python"
    env = _clean_env() | {
        "PYTHONPATH": str(REPO),
        "SIFT_URL": servers["sift_url"],
        "LABEL_STUDIO_URL": servers["ls_url"],
        "LABEL_STUDIO_API_KEY": LS_TOKEN,
    }
    if not key_file:
        env["SIFT_API_KEY"] = servers["sift_key"]
    done = subprocess.run(
        [str(python), "-m", "service.integrations.cli", *args],
        env=env,
        cwd=servers["root"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def _all_scores(sift: httpx.Client, vid: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = sift.get(f"/v1/valuations/{vid}/scores", params={"offset": len(rows)}).json()
        rows += page["items"]
        if len(rows) >= page["total"]:
            return rows


def _tasks(ls: httpx.Client, project_id: int) -> list[dict[str, Any]]:
    response = ls.get(
        "/api/tasks", params={"project": project_id, "page_size": 1000, "fields": "all"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return sorted(body["tasks"] if isinstance(body, dict) else body, key=lambda t: t["id"])


def test_push_predict_annotate_pull(servers: dict[str, Any], timings: dict[str, float]) -> None:
    sift, ls, valuation = servers["sift"], servers["ls"], servers["valuation"]
    vid = valuation["id"]
    scores = _all_scores(sift, vid)
    assert len(scores) == servers["pool"]["n_records"] == 20
    by_record = {s["record_id"]: s for s in scores}

    # A project made through Label Studio's API, then the pool pushed into it (SDK).
    project = ls.post(
        "/api/projects", json={"title": "sift pool", "label_config": DEFAULT_LABEL_CONFIG}
    )
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    started = time.monotonic()
    pushed = _cli(servers, "label-studio", "push", "--valuation", vid, "--project", str(pid))
    timings["push"] = round(time.monotonic() - started, 1)
    assert pushed == {"project_id": pid, "n_tasks": 20}
    tasks = _tasks(ls, pid)
    assert [t["data"]["sift_record_id"] for t in tasks] == [s["record_id"] for s in scores]
    assert [t["data"]["sift_rank"] for t in tasks] == list(range(20))  # best first
    assert [t["data"]["sift_score"] for t in tasks] == [s["score"] for s in scores]
    first = tasks[0]["data"]
    assert first["sift_valuation_id"] == vid and first["prompt"] and first["response"]
    assert first["sift_messages"][-1] == {"role": "assistant", "content": first["response"]}
    # A task Sift does not know gets no prediction (and breaks none of the others').
    stray = ls.post(
        f"/api/projects/{pid}/import",
        json=[
            {
                "data": {
                    "prompt": "not from Sift",
                    "response": "-",
                    "sift_record_id": "no-such-record",
                    "sift_rank": -1,
                    "sift_score": 0,
                }
            }
        ],
    )
    assert stray.status_code == 201, stray.text

    # A wrong key: Label Studio's own health check refuses to add the backend.
    url = f"{servers['sift_url']}/v1/label-studio/valuations/{vid}"
    refused = ls.post(
        "/api/ml",
        json={
            "project": pid,
            "url": url,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "sift",
            "basic_auth_pass": "sift_not-a-key",
        },
    )
    assert refused.status_code == 400, refused.text
    assert "authentication" in refused.text

    # Connect (POST /api/ml through the SDK) with a read_only key, as Basic auth.
    reader = sift.post("/v1/keys", json={"name": "label studio", "role": "read_only"})
    assert reader.status_code == 201, reader.text
    read_key = reader.json()["key"]
    connected = _cli(
        servers, "label-studio", "connect", "--valuation", vid, "--project", str(pid),
        "--backend-key", read_key,
    )  # fmt: skip
    backends = ls.get("/api/ml", params={"project": pid}).json()
    assert [b["id"] for b in backends] == [connected["ml_backend_id"]]
    backend = backends[0]
    assert backend["url"] == url and backend["auth_method"] == "BASIC_AUTH"
    assert backend["basic_auth_pass_is_set"] and backend["readable_state"] == "Connected"
    assert backend["model_version"] == f"sift-less-{vid}"
    hooks = ls.get("/api/webhooks", params={"project": pid}).json()
    assert [h for h in hooks if h["url"].startswith(url)] == []  # its webhook is removed

    # Label Studio retrieves predictions from Sift (the Data Manager action) ...
    started = time.monotonic()
    action = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": pid},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert action.status_code == 200, action.text
    timings["retrieve_predictions"] = round(time.monotonic() - started, 1)
    # ... and holds each task's score: the valuation's.
    predictions = ls.get("/api/predictions", params={"project": pid}).json()
    tasks = _tasks(ls, pid)
    record_of = {t["id"]: t["data"]["sift_record_id"] for t in tasks}
    got = {record_of[p["task"]]: p for p in predictions}
    assert set(got) == set(by_record)  # the stray task has none
    for record_id, prediction in got.items():
        assert prediction["score"] == by_record[record_id]["score"], record_id
        assert prediction["model_version"] == f"sift-less-{vid}"
        assert prediction["result"] == []
    stray_task = next(t for t in tasks if t["data"]["sift_record_id"] == "no-such-record")
    assert stray_task["predictions"] == []

    # Annotate two tasks through Label Studio's API: keep one (corrected), drop another.
    best, worst = tasks[0], tasks[19]
    for task, verdict, correction in ((best, "keep", "A corrected answer."), (worst, "drop", "")):
        result: list[dict[str, Any]] = [
            {
                "from_name": "verdict",
                "to_name": "response",
                "type": "choices",
                "value": {"choices": [verdict]},
            }
        ]
        if correction:
            result.append(
                {
                    "from_name": "corrected_response",
                    "to_name": "response",
                    "type": "textarea",
                    "value": {"text": [correction]},
                }
            )
        made = ls.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
        assert made.status_code == 201, made.text

    # Pull: the annotated tasks as a new Sift dataset, uploaded through Sift's API.
    started = time.monotonic()
    pulled = _cli(servers, "label-studio", "pull", "--project", str(pid), "--name", "reviewed")
    timings["pull"] = round(time.monotonic() - started, 1)
    assert pulled["n_records"] == 2
    records = sift.get(f"/v1/datasets/{pulled['id']}/records").json()["items"]
    by_id = {r["record_id"]: r for r in records}
    assert set(by_id) == {best["data"]["sift_record_id"], worst["data"]["sift_record_id"]}
    kept = by_id[best["data"]["sift_record_id"]]
    assert kept["messages"][:-1] == best["data"]["sift_messages"][:-1]
    assert kept["messages"][-1] == {"role": "assistant", "content": "A corrected answer."}
    studio = kept["metadata"]["label_studio"]
    assert studio["labels"] == {"verdict": "keep", "corrected_response": "A corrected answer."}
    assert studio["corrected"] is True and studio["task_id"] == best["id"]
    assert kept["metadata"]["sift"]["score"] == scores[0]["score"]
    assert kept["metadata"]["sift"]["rank"] == 0
    dropped = by_id[worst["data"]["sift_record_id"]]
    assert dropped["messages"] == worst["data"]["sift_messages"]
    assert dropped["metadata"]["label_studio"]["labels"] == {"verdict": "drop"}
    only_kept = _cli(
        servers, "label-studio", "pull", "--project", str(pid), "--name", "kept",
        "--only", "verdict=keep", key_file=True,
    )  # fmt: skip
    assert only_kept["n_records"] == 1 and only_kept["name"] == "kept"


def test_push_into_a_new_project_with_predictions_and_connect(servers: dict[str, Any]) -> None:
    """``push --top --predictions --connect --predict``: a new project of the best 5, scores
    imported as predictions, then the backend connected and asked (it skips the tasks that
    already hold its model version's prediction)."""
    ls, vid = servers["ls"], servers["valuation"]["id"]
    scores = _all_scores(servers["sift"], vid)[:5]
    out = _cli(
        servers, "label-studio", "push", "--valuation", vid, "--title", "best five", "--top",
        "5", "--predictions", "--connect", "--predict",
    )  # fmt: skip
    assert out["n_tasks"] == 5
    project = ls.get(f"/api/projects/{out['project_id']}").json()
    assert project["title"] == "best five"
    tasks = _tasks(ls, out["project_id"])
    assert [t["data"]["sift_record_id"] for t in tasks] == [s["record_id"] for s in scores]
    for task, score in zip(tasks, scores, strict=True):
        assert [p["score"] for p in task["predictions"]] == [score["score"]]
    assert (
        ls.get("/api/ml", params={"project": out["project_id"]}).json()[0]["id"]
        == (out["ml_backend_id"])
    )
