"""``service.client`` against the real app in-process (the test app of ``conftest``, its
database in a rolled-back transaction): uploads, pagination, errors with the API's
``{code, message, field}``, selections and exports, and ``wait`` with progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    Progress,
    WaitTimeoutError,
    models,
)
from service.db.models import Job, JobStatus, Valuation
from tests.service.conftest import api_key, finish_valuation, records


@pytest.fixture()
def http(app: FastAPI) -> Iterator[TestClient]:
    """The app over an in-process transport, with no key of its own: the client sends it."""
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


@pytest.fixture()
def sift(http: TestClient, db: Session) -> Client:
    return Client(api_key=api_key(db), http=http)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_upload_from_a_path_then_page_through_the_records(sift: Client, tmp_path: Path) -> None:
    rows = records(7, subtask="math", prefix="p")
    dataset = sift.datasets.upload(_jsonl(tmp_path / "pool.jsonl", rows))
    assert isinstance(dataset, models.DatasetRead)
    assert (dataset.name, dataset.n_records, dataset.subtasks) == ("pool", 7, {"math": 7})

    first = sift.datasets.records(dataset, limit=3)
    assert (first.total, first.limit, first.offset, len(first.items)) == (7, 3, 0, 3)
    every = list(sift.datasets.iter_records(dataset.id, page_size=3))
    assert [r.record_id for r in every] == [r["id"] for r in rows]
    assert [r.position for r in every] == list(range(7))
    assert every[0].messages[0].content == rows[0]["prompt"]

    # By id: those records, in upload order, paged as the rest; an empty filter is refused.
    some = sift.datasets.records(dataset, record_ids=["p5", "p1", "nope"], limit=1)
    assert (some.total, [r.record_id for r in some.items]) == (2, ["p1"])
    found = sift.datasets.iter_records(dataset, record_ids=("p6", "p2", "p4"), page_size=2)
    assert [r.record_id for r in found] == ["p2", "p4", "p6"]
    with pytest.raises(ValueError, match="names no record"):
        sift.datasets.records(dataset, record_ids=[])

    # A second dataset; iteration over the collection sees both, newest first.
    sift.datasets.create("probes", records(2, prefix="q"))
    assert [d.name for d in sift.datasets.iter(page_size=1)] == ["probes", "pool"]
    assert sift.datasets.get(dataset.id).content_hash == dataset.content_hash


def test_errors_carry_the_apis_code_message_and_field(
    sift: Client, http: TestClient, db: Session
) -> None:
    with pytest.raises(NotFoundError) as missing:
        sift.datasets.get("no-such-dataset")
    assert missing.value.status_code == 404 and missing.value.code == "not_found"
    assert "no-such-dataset" in missing.value.message
    assert "GET" in str(missing.value) and "/v1/datasets/no-such-dataset" in str(missing.value)

    with pytest.raises(InvalidInputError) as invalid:
        sift.models.create("", "builtin:tiny-llama")
    assert invalid.value.status_code == 422
    assert invalid.value.field == "body.name"

    # A page larger than the deployment allows (page_size_max 50 in these tests).
    with pytest.raises(InvalidInputError) as too_big:
        sift.datasets.list(limit=51)
    assert too_big.value.field == "query.limit" and "at most 50" in too_big.value.message

    with pytest.raises(AuthenticationError) as anonymous:
        Client(api_key="sift_not-a-key", http=http).me()
    assert anonymous.value.status_code == 401

    reader = Client(api_key=api_key(db, role="read_only"), http=http)
    assert reader.me().role == "read_only"
    with pytest.raises(PermissionDeniedError):
        reader.models.create("tiny", "builtin:tiny-llama")


def test_ids_are_one_path_segment(sift: Client) -> None:
    """An id holding ``/`` or ``..`` cannot reach another route; an empty one is refused
    before any request (it would address the whole collection)."""
    with pytest.raises(NotFoundError):
        sift.datasets.get("../models")
    with pytest.raises(ValueError, match="non-empty"):
        sift.datasets.delete("")


def test_valuation_scores_select_and_export(
    sift: Client, db: Session, tmp_path: Path, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    raw = make_valuation()
    valuation = sift.valuations.get(raw["id"])
    assert isinstance(valuation, models.ValuationRead) and valuation.status == "queued"
    with pytest.raises(ConflictError) as early:
        sift.valuations.scores(valuation)
    assert early.value.code == "conflict"

    pool_ids = [f"pool{i}" for i in range(5)]
    finish_valuation(db, valuation.id, [(r, 1.0 - i / 10) for i, r in enumerate(pool_ids)])
    scores = list(sift.valuations.iter_scores(valuation, page_size=2))
    assert [s.record_id for s in scores] == pool_ids and [s.rank for s in scores] == [0, 1, 2, 3, 4]

    selection = sift.valuations.select(valuation, rule="top_k", value=3)
    assert selection.n_selected == 3 and selection.record_ids == pool_ids[:3]
    lowest = sift.valuations.select(valuation, {"rule": "top_k", "value": 2, "order": "asc"})
    assert lowest.record_ids == pool_ids[::-1][:2]
    exported = list(sift.selections.export(selection))
    assert [r["id"] for r in exported] == pool_ids[:3]
    path = sift.selections.download(selection.id, tmp_path / "top.jsonl")
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == exported
    assert not (tmp_path / "top.jsonl.partial").exists()

    with pytest.raises(ConflictError):
        sift.valuations.cancel(valuation)  # it has finished


class _Worker:
    """Plays the worker between polls: each call moves the job one step along ``script``."""

    def __init__(self, db: Session, job_id: str, script: list[tuple[str, str | None, int, int]]):
        self.db, self.job_id, self.script = db, job_id, list(script)
        self.seen: list[Progress] = []

    def __call__(self, progress: Progress) -> None:
        self.seen.append(progress)
        if not self.script:
            return
        status, stage, done, total = self.script.pop(0)
        job = self.db.get(Job, self.job_id)
        assert job is not None
        job.status, job.stage, job.progress_done, job.progress_total = status, stage, done, total
        if status == "failed":
            job.error = "the warmup diverged"
        self.db.commit()


def _job_id(db: Session, valuation_id: str) -> str:
    valuation = db.get(Valuation, valuation_id)
    assert valuation is not None
    return valuation.job_id


def test_wait_reports_stage_counts_and_an_eta_then_returns_the_final_state(
    sift: Client, db: Session, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    valuation = sift.valuations.get(make_valuation()["id"])
    worker = _Worker(
        db,
        _job_id(db, valuation.id),
        [
            ("running", "warmup", 0, 2),
            ("running", "warmup", 1, 2),
            ("running", "featurize", 0, 4),
            ("running", "featurize", 2, 4),
            ("succeeded", "score", 4, 4),
        ],
    )
    done = sift.wait(valuation, progress=worker, timeout=30, poll_interval=0.02)
    assert isinstance(done, models.ValuationRead) and done.status == "succeeded"
    seen = [(p.status, p.stage, p.done, p.total) for p in worker.seen]
    assert seen == [
        ("queued", None, 0, 0),
        ("running", "warmup", 0, 2),
        ("running", "warmup", 1, 2),
        ("running", "featurize", 0, 4),
        ("running", "featurize", 2, 4),
        ("succeeded", "score", 4, 4),
    ]
    etas = [p.eta_s for p in worker.seen]
    assert etas[0] is None and etas[1] is None  # no rate yet
    assert etas[2] is not None and etas[2] > 0  # half the warmup done: a rate
    assert etas[3] is None  # a new stage starts its clock again
    assert etas[4] is not None and etas[4] > 0 and etas[5] == 0
    assert all(p.kind == "valuation" and p.id == valuation.id for p in worker.seen)
    assert "featurize 2/4 ETA" in worker.seen[4].describe()


def test_wait_on_a_failed_job_raises_with_its_error(
    sift: Client, db: Session, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    raw = make_valuation()
    worker = _Worker(db, _job_id(db, raw["id"]), [("failed", "warmup", 0, 2)])
    with pytest.raises(JobFailedError) as failed:
        sift.wait(raw["id"], kind="valuation", progress=worker, poll_interval=0.02)
    assert failed.value.status == "failed" and failed.value.error == "the warmup diverged"
    assert "the warmup diverged" in str(failed.value)

    state = sift.wait(raw["id"], kind="valuation", raise_on_failure=False)
    assert state.status == "failed"


def test_wait_times_out_and_leaves_the_job_running(
    sift: Client, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    raw = make_valuation()
    with pytest.raises(WaitTimeoutError) as late:
        sift.wait(sift.valuations.get(raw["id"]), timeout=0.2, poll_interval=0.05)
    assert late.value.resource.status == "queued" and "keeps running" in str(late.value)
    with pytest.raises(ValueError, match="kind"):
        sift.wait(raw["id"])  # a bare id needs its kind


def test_every_job_kind_can_be_waited_on(
    sift: Client, db: Session, make_dataset: Callable[..., dict[str, Any]]
) -> None:
    """A score set through the same wait: the kind follows from the model's type."""
    pool = make_dataset(4, name="pool")
    score_set = sift.score_sets.create(scorer="text", dataset_id=pool["id"])
    assert isinstance(score_set, models.ScoreSetRead)
    job = db.get(Job, score_set.job_id)
    assert job is not None
    job.status = JobStatus.cancelled.value
    db.commit()
    with pytest.raises(JobFailedError) as cancelled:
        sift.wait(score_set, poll_interval=0.02)
    assert cancelled.value.kind == "score_set" and cancelled.value.status == "cancelled"


def test_async_client_against_the_app(app: FastAPI, db: Session, tmp_path: Path) -> None:
    key = api_key(db)
    pool = _jsonl(tmp_path / "a.jsonl", records(5, prefix="a"))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            sift = AsyncClient(api_key=key, http=http)
            dataset = await sift.datasets.upload(pool, name="async-pool")
            assert dataset.n_records == 5
            ids = [r.record_id async for r in sift.datasets.iter_records(dataset, page_size=2)]
            assert ids == [f"a{i}" for i in range(5)]
            with pytest.raises(NotFoundError):
                await sift.models.get("missing")
            assert (await sift.me()).tenant_name == "team-a"

    asyncio.run(scenario())


def test_the_eta_follows_the_rate_of_the_current_stage() -> None:
    from types import SimpleNamespace

    from service.client._core import ProgressTracker

    now = [0.0]
    tracker = ProgressTracker("valuation", "v1", clock=lambda: now[0])

    def at(t: float, stage: str, done: int, total: int, status: str = "running") -> Any:
        now[0] = t
        progress = SimpleNamespace(done=done, total=total)
        return tracker.update(SimpleNamespace(status=status, stage=stage, progress=progress))

    assert at(0, "featurize", 0, 10).eta_s is None
    assert at(10, "featurize", 5, 10).eta_s == pytest.approx(10.0)  # 0.5 a second, 5 left
    assert at(12, "featurize", 8, 10).eta_s == pytest.approx(2 * 12 / 8)
    assert at(13, "score", 0, 3).eta_s is None  # a new stage: no rate yet
    assert at(14, "score", 1, 3).eta_s == pytest.approx(2.0)
    last = at(15, "score", 3, 3, status="succeeded")
    assert last.eta_s == 0 and last.elapsed_s == 15 and last.finished


def test_async_wait_and_export(
    app: FastAPI, db: Session, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    key = api_key(db)
    raw = make_valuation()
    finish_valuation(db, raw["id"], [(f"pool{i}", 1.0 - i / 10) for i in range(5)])

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            sift = AsyncClient(api_key=key, http=http)
            seen: list[Progress] = []
            done = await sift.wait(raw["id"], kind="valuation", progress=seen.append)
            assert done.status == "succeeded" and seen[-1].eta_s == 0
            selection = await sift.valuations.select(done, rule="top_fraction", value=0.4)
            ids = [r["id"] async for r in sift.selections.export(selection)]
            assert ids == ["pool0", "pool1"]

    asyncio.run(scenario())


def test_multipart_uploads_of_tables_and_checkpoints(
    sift: Client, tmp_path: Path, model: dict[str, Any]
) -> None:
    from tests.service.test_warmup_runs import adapter

    table = tmp_path / "gsm.csv"
    table.write_text('question,answer,level\nWhat is 2+3?,5,1\n"Say ""hi""",hi,2\n')
    imported = sift.datasets.import_file(
        table, mapping={"prompt": "question", "response": "answer", "metadata": ["level"]}
    )
    assert (imported.name, imported.n_records) == ("gsm", 2)
    first = sift.datasets.records(imported).items[0]
    assert first.messages[0].content == "What is 2+3?" and first.metadata == {"level": "1"}

    files = []
    for step in (0, 1):
        files.append(tmp_path / f"step-{step}.safetensors")
        files[-1].write_bytes(adapter(seed=step))
    run = sift.warmup_runs.upload(
        model["id"], lora_alpha=16, checkpoints=[(0, 2e-4, files[0]), (250, 1e-4, files[1])]
    )
    assert isinstance(run, models.WarmupRunRead) and run.origin == "upload"
    assert [(c.step, c.learning_rate) for c in run.checkpoints] == [(0, 2e-4), (250, 1e-4)]
    assert sift.warmup_runs.get(run).id == run.id
