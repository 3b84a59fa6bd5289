"""The evaluation task on a migrated database: a python_tests pass rate through the real
sandbox, runs stored as they finish and skipped when the task comes again (resumable), the
same table from the resumed job, and nothing written for an evaluation deleted meanwhile."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.blobs import TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Evaluation, Job, Model, RewardSpec
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from tests.workers.conftest import insert_dataset
from workers.contracts import EVALUATION_RUN
from workers.engine.data import Example, tokenize_examples
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.synthetic import planted_tasks
from workers.tasks import evaluation as tasks
from workers.tasks import recovery
from workers.tasks.jobs import run_tracked

pytestmark = pytest.mark.usefixtures("migrated")

SETTINGS: dict[str, Any] = {
    # one step a run: warmup_ratio 0, or that step would be at learning rate 0 (the API refuses)
    "training": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 4, "warmup_ratio": 0.0},
    "max_length": 96,
    "max_new_tokens": 4,
    "bootstrap": 50,
}
# The candidate is swallowed by a string the test code closes: whatever the tiny model
# writes, "add" is the prompt's own function, so the pass rates are known: 1, then 0.
OPEN = "\n_ = '''"
CLOSE = "'''\n"
TARGETS = [
    ("t-right", "def add(a, b):\n    return a + b\n"),
    ("t-wrong", "def add(a, b):\n    return a - b\n"),
]


def _dataset(name: str, rows: list[dict[str, Any]]) -> str:
    with SessionLocal() as session:
        dataset_id = insert_dataset(session, name, rows)
        session.commit()
        return dataset_id


def _sandbox_targets() -> list[dict[str, Any]]:
    return [
        {
            "id": record_id,
            "messages": [
                {"role": "user", "content": code + OPEN},
                {"role": "assistant", "content": "pass"},
            ],
            "metadata": {
                "test": CLOSE + "def check(f):\n    assert f(1, 2) == 3\n",
                "entry_point": "add",
            },
        }
        for record_id, code in TARGETS
    ]


def _evaluation(
    arms: list[dict[str, Any]],
    *,
    pool_rows: list[dict[str, Any]] | None = None,
    target_rows: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] = SETTINGS,
    source: str = "builtin:tiny-llama",
) -> str:
    """An evaluation row (queued); with the python_tests metric unless ``target_rows`` are
    given (then no metric)."""
    pool = _dataset("pool", pool_rows or [dict(r) for r in planted_tasks(3, seed=0)])
    target = _dataset("target", target_rows or _sandbox_targets())
    with_metric = target_rows is None
    with SessionLocal() as session:
        model = Model(tenant_id=DEFAULT_TENANT_ID, name="model", source=source)
        spec = RewardSpec(
            tenant_id=DEFAULT_TENANT_ID,
            name="tests",
            kind="python_tests",
            spec={"kind": "python_tests", "program": "prompt+response", "timeout_s": 20.0},
        )
        job = Job(tenant_id=DEFAULT_TENANT_ID, kind="evaluation", status="queued")
        session.add_all([model, spec, job])
        session.flush()
        row = Evaluation(
            tenant_id=DEFAULT_TENANT_ID,
            job_id=job.id,
            model_id=model.id,
            pool_dataset_id=pool,
            target_dataset_id=target,
            reward_spec_id=spec.id if with_metric else None,
            budget=4,
            arms=arms,
            metric={"kind": "reward", "reward_spec_id": spec.id} if with_metric else None,
            settings=settings,
        )
        session.add(row)
        session.commit()
        return row.id


def _run(evaluation_id: str) -> tuple[Evaluation, Job]:
    ctx = tasks.EvaluationContext(evaluation_id)
    run_tracked(ctx.job, lambda: tasks.run(ctx))
    with SessionLocal() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None
        job = session.get(Job, row.job_id)
        assert job is not None
        session.expunge_all()
        return row, job


def _blobs() -> TenantBlobStore:
    return TenantBlobStore(blob_store_from_settings(get_settings()), DEFAULT_TENANT_ID)


def test_python_tests_pass_rate_and_a_resumed_job_gives_the_same_table() -> None:
    arms: list[dict[str, Any]] = [
        {"kind": "random", "name": "random", "seeds": [0, 1]},
        {"kind": "full", "name": "full"},
    ]
    evaluation_id = _evaluation(arms)
    row, job = _run(evaluation_id)
    assert job.status == "succeeded", job.error
    result = row.result
    assert result is not None and result["metric"] == "python_tests reward"
    for arm in result["arms"]:
        assert arm["metric"]["mean"] == 0.5 and arm["metric"]["per_seed"] == [0.5] * len(
            arm["curves"]
        )
    assert result["arms"][1]["n_train"] == 15 and result["arms"][0]["n_train"] == 4
    blobs = _blobs()
    runs = sorted(blobs.list_keys(f"evaluations/{evaluation_id}/runs/"))
    names = ["00-0.json", "00-1.json", "01-x.json", "base.json"]
    assert [k.rsplit("/", 1)[1] for k in runs] == names
    stored = json.loads(blobs.get_bytes(runs[0]))
    assert stored["metric"] == [1.0, 0.0] and stored["target_record_ids"] == ["t-right", "t-wrong"]

    # The task comes again for an unfinished job that had stored two of its three runs.
    blobs.delete_prefix(runs[1])
    with SessionLocal() as session:
        again = session.get(Evaluation, evaluation_id)
        assert again is not None
        again.result = None
        again_job = session.get(Job, again.job_id)
        assert again_job is not None
        again_job.status, again_job.notes = "running", []
        session.commit()
    resumed, job = _run(evaluation_id)
    assert job.status == "succeeded", job.error
    assert "resumed: 2 of 3 runs were stored already" in job.notes
    assert resumed.result == result


def test_an_evaluation_deleted_mid_job_leaves_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE while the second run trains (as the endpoint does: rows, then the files): the
    task writes no run, plot or row after it."""
    evaluation_id = _evaluation([{"kind": "random", "name": "random", "seeds": [0, 1, 2]}])
    real = tasks.evaluation.fine_tune
    calls = []

    def fine_tune_then_delete(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == 2:
            with SessionLocal() as session:
                row = session.get(Evaluation, evaluation_id)
                assert row is not None
                session.delete(session.get(Job, row.job_id))
                session.delete(row)
                session.commit()
            _blobs().delete_prefix(f"evaluations/{evaluation_id}/")
        return out

    monkeypatch.setattr(tasks.evaluation, "fine_tune", fine_tune_then_delete)
    ctx = tasks.EvaluationContext(evaluation_id)
    run_tracked(ctx.job, lambda: tasks.run(ctx))
    assert len(calls) == 2
    assert _blobs().list_keys(f"evaluations/{evaluation_id}/") == []
    with SessionLocal() as session:
        assert session.get(Evaluation, evaluation_id) is None


def test_the_on_target_arm_beats_the_off_target_arm_on_a_planted_task() -> None:
    """The job on a tiny budget: an arm of the target's task ('repeat the letter') ends with a
    lower target loss than an arm of another task trained identically, and the paired
    difference says so with its interval below 0."""
    rows = [dict(r) for r in planted_tasks(24, seed=4)]
    of_task = {t: [r for r in rows if r["subtask"] == t] for t in ("repeat_letter", "arithmetic")}
    target = of_task["repeat_letter"][16:]
    pool = [r for r in rows if r not in target]
    arms = [
        {
            "kind": "selection",
            "name": name,
            "reference": name == "off-target",
            "record_ids": [str(r["id"]) for r in of_task[task][:16]],
        }
        for name, task in (("on-target", "repeat_letter"), ("off-target", "arithmetic"))
    ]
    settings = {
        "training": {"epochs": 3, "learning_rate": 1e-2, "batch_size": 4},
        "lora": {"r": 8, "alpha": 32.0, "dropout": 0.0},
        "max_length": 64,
        "bootstrap": 500,
    }
    evaluation_id = _evaluation(arms, pool_rows=pool, target_rows=target, settings=settings)
    row, job = _run(evaluation_id)
    assert job.status == "succeeded", job.error
    assert row.result is not None
    on, off = row.result["arms"]
    assert row.result["reference"] == "off-target" and off["vs_reference"] is None
    assert on["loss"]["high"] < off["loss"]["low"], (on["loss"], off["loss"])
    assert on["vs_reference"]["loss"]["high"] < 0.0
    assert on["vs_reference"]["loss"]["mean"] == pytest.approx(
        on["loss"]["mean"] - off["loss"]["mean"]
    )
    assert row.result["base"]["loss"]["mean"] > on["loss"]["mean"]  # (off-target: about equal)


def test_a_cancel_stops_the_job_at_the_next_training_step(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluation_id = _evaluation([{"kind": "random", "name": "random", "seeds": [0, 1, 2]}])
    real = tasks.evaluation.fine_tune
    calls = []

    def fine_tune_then_cancel(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        out = real(*args, **kwargs)
        with SessionLocal() as session:
            row = session.get(Evaluation, evaluation_id)
            assert row is not None
            job = session.get(Job, row.job_id)
            assert job is not None
            job.cancel_requested = True
            session.commit()
        return out

    monkeypatch.setattr(tasks.evaluation, "fine_tune", fine_tune_then_cancel)
    row, job = _run(evaluation_id)
    assert job.status == "cancelled" and row.result is None and row.plot_png_key is None
    assert len(calls) == 2  # the second run stopped before its first step
    runs = _blobs().list_keys(f"evaluations/{evaluation_id}/runs/")
    assert sorted(k.rsplit("/", 1)[1] for k in runs) == ["00-0.json", "base.json"]


def test_a_running_evaluation_that_lost_its_task_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recovery sweep restarts it (and the restarted task resumes from the stored runs)."""
    evaluation_id = _evaluation([{"kind": "full", "name": "full"}])
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with SessionLocal() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None
        job = session.get(Job, row.job_id)
        assert job is not None
        job.status, job.stage = "running", tasks.TRAIN_STAGE
        job.created_at = job.started_at = job.heartbeat_at = long_ago
        session.commit()
        job_id = job.id
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def enqueue(task_name: str, payload: Any, *, job_id: str) -> str:
        sent.append((task_name, job_id, payload.model_dump()))
        return "new"

    monkeypatch.setattr(recovery, "enqueue", enqueue)
    assert recovery.sweep(stale_s=60).restarted == [job_id]
    assert sent == [(EVALUATION_RUN, job_id, {"evaluation_id": evaluation_id})]


def test_the_system_prompt_reaches_the_tokenized_targets() -> None:
    """With the builtin byte tokenizer a 96-byte system prompt leaves no room in max_length 96
    for any response token: every target (and pool) record is left out, and the job says so."""
    targets: list[dict[str, Any]] = [dict(r) for r in planted_tasks(1, seed=1)]
    settings = {**SETTINGS, "system_prompt": "x" * 96}
    arms: list[dict[str, Any]] = [{"kind": "full", "name": "full"}]
    row, job = _run(_evaluation(arms, target_rows=targets, settings=settings))
    assert job.status == "failed" and job.error == "no target record fits in max_length=96"
    assert any(note.startswith(f"{len(targets)} target records do not fit") for note in job.notes)
    assert row.settings["system_prompt"] == "x" * 96
    # without it every target fits: the system prompt made the difference
    _, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
    examples = [Example(str(r["id"]), tuple(r["messages"])) for r in targets]
    kept, skipped = tokenize_examples(tokenizer, examples, 96)
    assert len(kept) == len(targets) and not skipped


def test_an_arm_left_one_step_at_learning_rate_0_by_max_length_fails_before_training() -> None:
    """The API accepted 5 records at batch_size 4 (2 steps); max_length leaves 1, so 1 step,
    the warmup's first, at learning rate 0: the job fails naming the arm, and nothing is
    trained or scored (not even the base model)."""

    def row(i: int, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "ok"}]
        return {"id": f"p{i}", "messages": messages}

    pool = [row(0, "short")] + [row(i, "long " * 40) for i in range(1, 5)]
    settings = {**SETTINGS, "training": {**SETTINGS["training"], "warmup_ratio": 0.5}}
    targets: list[dict[str, Any]] = [dict(r) for r in planted_tasks(1, seed=1)]
    arms: list[dict[str, Any]] = [{"kind": "full", "name": "everything"}]
    evaluation_id = _evaluation(arms, pool_rows=pool, target_rows=targets, settings=settings)
    _, job = _run(evaluation_id)
    assert job.status == "failed"
    assert job.error is not None and job.error.startswith(
        "arm 'everything': 1 of its records fit in max_length=96, and this warmup cannot learn"
    ), job.error
    assert any(note.startswith("4 pool records do not fit") for note in job.notes)
    assert _blobs().list_keys(f"evaluations/{evaluation_id}/") == []


@pytest.mark.real_model
def test_an_evaluation_of_a_gguf_model_converts_it_through_the_model_cache(
    smollm2_gguf: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model registered as a GGUF file (SmolLM2) is read through SIFT_MODEL_CACHE_DIR by the
    evaluation worker, as by valuations: the job runs and names the GGUF fingerprint."""
    monkeypatch.setenv("SIFT_MODEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    rows: list[dict[str, Any]] = [dict(r) for r in planted_tasks(1, seed=0)][:4]
    targets: list[dict[str, Any]] = [dict(r) for r in planted_tasks(1, seed=1)][:2]
    arms: list[dict[str, Any]] = [{"kind": "full", "name": "full"}]
    row, job = _run(
        _evaluation(arms, pool_rows=rows, target_rows=targets, source=str(smollm2_gguf))
    )
    assert job.status == "succeeded", job.error
    assert row.result is not None
    assert row.result["provenance"]["model"].startswith("gguf:sha256:")
    assert row.result["arms"][0]["n_train"] == len(rows)
