"""The ``sift`` subcommands over the API (``service.client``) against a real HTTP server: uvicorn
on loopback serving the test app, configured by ``SIFT_URL`` / ``SIFT_API_KEY``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session

from service import cli
from service.db.models import Job, Valuation
from tests.integration.servers import free_port
from tests.service.conftest import api_key, finish_valuation, records


@pytest.fixture()
def server(app: FastAPI) -> Iterator[uvicorn.Server]:
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    srv.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield srv
    srv.should_exit = True
    thread.join(10)


@pytest.fixture()
def env(server: uvicorn.Server, db: Session, monkeypatch: pytest.MonkeyPatch) -> str:
    key = api_key(db)
    monkeypatch.setenv("SIFT_URL", server.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("SIFT_API_KEY", key)
    return key


def _idle(srv: uvicorn.Server) -> None:
    """Until the server has finished every request (it shares the test's session)."""
    deadline = time.monotonic() + 20
    while srv.server_state.connections or srv.server_state.tasks:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def sift(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> tuple[str, str]:
    if status:
        with pytest.raises(SystemExit) as ended:
            cli.main(list(argv))
        assert ended.value.code == status, capsys.readouterr()
    else:
        cli.main(list(argv))
    out = capsys.readouterr()
    return out.out, out.err


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_upload_register_value_wait_scores_select_export(
    env: str,
    server: uvicorn.Server,
    db: Session,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool_rows = records(5, prefix="pool")
    out, err = sift(capsys, "datasets", "upload", _jsonl(tmp_path / "pool.jsonl", pool_rows))
    assert "5 records" in out and "uploaded" in err
    out, _ = sift(
        capsys,
        "datasets",
        "upload",
        _jsonl(tmp_path / "p.jsonl", records(2)),
        "--name",
        "probes",
        "--json",
    )
    probes = json.loads(out)
    assert probes["name"] == "probes" and probes["n_records"] == 2
    pool = json.loads(sift(capsys, "datasets", "list", "--json")[0])["items"][-1]
    assert pool["name"] == "pool"

    model = json.loads(
        sift(capsys, "models", "register", "builtin:tiny-llama", "--reuse", "--json")[0]
    )
    again = json.loads(
        sift(capsys, "models", "register", "builtin:tiny-llama", "--reuse", "--json")[0]
    )
    assert again["id"] == model["id"]  # --reuse: registered once

    out, err = sift(
        capsys,
        "valuations",
        "start",
        "--model",
        model["id"],
        "--pool",
        pool["id"],
        "--probes",
        probes["id"],
        "--settings",
        '{"projection": {"dim": 512}}',
        "--json",
    )
    valuation = json.loads(out)
    assert valuation["status"] == "queued" and valuation["settings"]["projection"]["dim"] == 512
    assert f"valuation {valuation['id']} queued" in err

    # A worker halfway through featurizing: --timeout ends the wait (exit 4), progress shown.
    _idle(server)
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status, job.stage, job.progress_done, job.progress_total = "running", "featurize", 2, 4
    db.commit()
    _, err = sift(capsys, "valuations", "wait", valuation["id"], "--timeout", "1", status=4)
    assert "running featurize 2/4" in err and "keeps running" in err

    _idle(server)
    ranked = [r["id"] for r in pool_rows][::-1]
    finish_valuation(db, valuation["id"], [(r, 1 - i / 10) for i, r in enumerate(ranked)])
    _, err = sift(capsys, "valuations", "wait", valuation["id"])
    assert "succeeded" in err

    out, _ = sift(capsys, "valuations", "list")
    assert valuation["id"] in out and "succeeded" in out and "valuations 1-1 of 1" in out
    out, _ = sift(capsys, "datasets", "list")
    assert pool["id"] in out and probes["id"] in out
    out, _ = sift(capsys, "valuations", "scores", valuation["id"], "--limit", "3")
    assert "rank" in out and ranked[0] in out and "+1.0000" in out and ranked[3] not in out
    scores = json.loads(sift(capsys, "valuations", "scores", valuation["id"], "--json")[0])
    assert [s["record_id"] for s in scores["items"]] == ranked

    selection = json.loads(
        sift(capsys, "valuations", "select", valuation["id"], "--top-k", "2", "--json")[0]
    )
    assert selection["record_ids"] == ranked[:2]
    out, _ = sift(capsys, "selections", "export", selection["id"])
    assert [json.loads(line)["id"] for line in out.splitlines()] == ranked[:2]
    target = tmp_path / "top.jsonl"
    out, _ = sift(capsys, "selections", "export", selection["id"], "-o", str(target))
    assert "wrote 2 records" in out
    assert [json.loads(line) for line in target.read_text().splitlines()] == [
        r for r in pool_rows if r["id"] in ranked[:2]
    ][::-1]


def test_errors_are_one_line_and_json_for_scripts(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, err = sift(capsys, "datasets", "get", "nope", status=1)
    assert "404 not_found" in err and "nope" in err and "Traceback" not in err
    out, _ = sift(capsys, "datasets", "get", "nope", "--json", status=1)
    assert json.loads(out)["error"]["code"] == "not_found"

    for group in ("valuations", "score-sets", "curations", "studies", "evaluations"):
        _, err = sift(capsys, group, "delete", "nope", status=1)
        assert "DELETE" in err and "404 not_found" in err, group
    _, err = sift(capsys, "models", "register", "not a source", status=1)
    assert "422 invalid_input" in err and "(field source)" in err

    _, err = sift(capsys, "me", "--api-key", "sift_wrong", status=1)
    assert "401 unauthorized" in err

    monkeypatch.setenv("SIFT_URL", f"http://127.0.0.1:{free_port()}")
    _, err = sift(capsys, "me", "--retries", "1", status=1)
    assert "ConnectError" in err and "after 2 attempts" in err

    with pytest.raises(SystemExit, match="--settings is not valid JSON"):
        cli.main(["valuations", "start", "--model", "m", "--pool", "p", "--settings", "{"])


def test_flags_override_the_environment(
    env: str,
    server: uvicorn.Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIFT_URL", "http://127.0.0.1:9")  # nothing there
    monkeypatch.setenv("SIFT_API_KEY", "sift_wrong")
    out, _ = sift(capsys, "me", "--url", server.url, "--api-key", env, "--json")  # type: ignore[attr-defined]
    assert json.loads(out)["tenant_name"] == "team-a"


def test_a_terminal_gets_a_live_progress_bar(
    env: str,
    server: uvicorn.Server,
    db: Session,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make_valuation: Any,
) -> None:
    valuation = make_valuation()
    _idle(server)
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    finish_valuation(db, valuation["id"], [])
    job = db.get(Job, row.job_id)
    assert job is not None
    job.stage, job.progress_done, job.progress_total = "score", 4, 4
    db.commit()
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws its bar as on a terminal
    monkeypatch.setenv("COLUMNS", "120")
    out, err = sift(capsys, "valuations", "wait", valuation["id"])
    assert f"valuation {valuation['id']}: succeeded score 4/4" in out
    assert "\x1b[" in err and "score" in err and "4/4" in err and "ETA 0s" in err
    assert "valuation " not in err.split("note:")[0]  # the bar, not the plain lines
