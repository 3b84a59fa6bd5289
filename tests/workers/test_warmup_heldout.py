"""A valuation that names a held-out set for its warmup (``warmup_eval_dataset_id``), run through
``featurize_valuation`` on a migrated database: the warmup run's curve gets the held-out loss at
each of its checkpoints (recomputed here from the stored checkpoint files), records too long for
max_length are left out and noted, a second valuation on the shared run with the same held-out
content reuses the entry, one with another set adds a second entry, and the plot shows them."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from sqlalchemy import select

from service.blobs import TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Checkpoint, Dataset, Job, Model, Record, Valuation, WarmupRun
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from service.warmup_runs import service as warmup_runs
from tests.workers.conftest import insert_dataset
from workers.engine import data, evaluation, lora, models, warmup
from workers.engine.synthetic import planted_tasks
from workers.tasks import valuation as tasks
from workers.tasks.jobs import run_tracked

pytestmark = pytest.mark.usefixtures("migrated")

MAX_LENGTH = 64
SETTINGS = {
    "warmup": {"fraction": 1.0, "epochs": 2, "batch_size": 5, "learning_rate": 3e-3},
    "lora": {"r": 4, "alpha": 16.0},
    "max_length": MAX_LENGTH,
}
TOO_LONG = {
    "id": "too-long",
    "messages": [
        {"role": "user", "content": "word " * 100},
        {"role": "assistant", "content": "answer"},
    ],
}


@pytest.fixture()
def made() -> dict[str, str]:
    """A pool and a probe set, two copies of one held-out set (one record too long) and
    another held-out set, a model."""
    with SessionLocal() as session:
        model = Model(tenant_id=DEFAULT_TENANT_ID, name="tiny", source=models.TINY_LLAMA)
        session.add(model)
        heldout = [dict(r) for r in planted_tasks(1, seed=1, id_prefix="h")] + [TOO_LONG]
        ids = {
            "pool": insert_dataset(session, "pool", [dict(r) for r in planted_tasks(2, seed=0)]),
            "probes": insert_dataset(
                session, "probes", [dict(r) for r in planted_tasks(1, seed=3)]
            ),
            "heldout": insert_dataset(session, "heldout", heldout),
            "twin": insert_dataset(session, "twin", heldout),
            "other": insert_dataset(
                session, "other", [dict(r) for r in planted_tasks(1, seed=2, id_prefix="o")]
            ),
        }
        session.commit()
        ids["model"] = model.id
        return ids


def _value(made: dict[str, str], heldout: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create a valuation with warmup_eval_dataset_id ``heldout`` and run its first task (the
    shard tasks it enqueues are recorded, not run); the job's notes."""
    with SessionLocal() as session:
        job = Job(tenant_id=DEFAULT_TENANT_ID, kind="valuation", status="queued")
        session.add(job)
        session.flush()
        valuation = Valuation(
            tenant_id=DEFAULT_TENANT_ID,
            job_id=job.id,
            model_id=made["model"],
            pool_dataset_id=made["pool"],
            probe_dataset_id=made["probes"],
            warmup_eval_dataset_id=made[heldout],
            method="less",
            settings=SETTINGS,
            skipped=[],
        )
        session.add(valuation)
        session.commit()
        valuation_id = valuation.id
    monkeypatch.setattr(tasks, "enqueue", lambda *args, **kwargs: "task")
    ctx = tasks.Context(valuation_id)
    run_tracked(ctx.job, lambda: tasks.featurize_valuation(ctx))
    with SessionLocal() as session:
        job_row = session.get(Job, ctx.job.job_id)
        assert job_row is not None
        assert job_row.error is None, job_row.error
        return valuation_id


def _notes(valuation_id: str) -> list[str]:
    with SessionLocal() as session:
        valuation = session.get(Valuation, valuation_id)
        assert valuation is not None
        return list(valuation.job.notes or [])


def _run() -> tuple[dict[str, Any], list[Checkpoint], str]:
    with SessionLocal() as session:
        run = session.scalars(select(WarmupRun)).one()  # one run, shared by the valuations
        rows = session.scalars(
            select(Checkpoint).where(Checkpoint.warmup_run_id == run.id).order_by(Checkpoint.epoch)
        ).all()
        assert run.curve is not None
        return dict(run.curve), list(rows), run.content_key


def _blobs() -> TenantBlobStore:
    return TenantBlobStore(blob_store_from_settings(get_settings()), DEFAULT_TENANT_ID)


def _reference(dataset_id: str, rows: list[Checkpoint]) -> list[float]:
    """Mean response NLL per record of the held-out records that fit, at each stored checkpoint,
    one record at a time."""
    model, tokenizer = models.load_model_and_tokenizer(models.TINY_LLAMA)
    settings = tasks.resolve_settings(SETTINGS, models.TINY_LLAMA)
    peft_model = lora.attach_lora(model, tasks._lora_settings(settings))
    with SessionLocal() as session:
        records = session.scalars(
            select(Record).where(Record.dataset_id == dataset_id).order_by(Record.position)
        ).all()
        examples = [data.Example(r.record_id, tuple(r.messages)) for r in records]
    tokenized, _ = data.tokenize_examples(tokenizer, examples, MAX_LENGTH)
    blobs, out = _blobs(), []
    for row in rows:
        assert row.optimizer_blob_key is not None
        ckpt = warmup.checkpoint_from_safetensors(
            blobs.get_bytes(row.adapter_blob_key), blobs.get_bytes(row.optimizer_blob_key)
        )
        lora.load_adapter_state(peft_model, ckpt.adapter_state)
        losses = [
            float(evaluation.target_losses(peft_model, [ex], batch_size=1, pad_token_id=0)[0])
            for ex in tokenized
        ]
        out.append(statistics.fmean(losses))
    return out


def test_the_heldout_loss_per_epoch_is_stored_on_the_shared_run_once_per_set(
    made: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _value(made, "heldout", monkeypatch)
    curve, rows, key = _run()
    [entry] = curve["heldout"]
    assert [(e["epoch"], e["step"]) for e in entry["epochs"]] == [(r.epoch, r.step) for r in rows]
    assert [(e["epoch"], e["step"]) for e in curve["epochs"]] == [(r.epoch, r.step) for r in rows]
    assert len(rows) == 2
    with SessionLocal() as session:
        heldout = session.get(Dataset, made["heldout"])
        assert heldout is not None
        content_hash = heldout.content_hash
        skipped = session.get(Valuation, first).skipped  # type: ignore[union-attr]
    assert {k: v for k, v in entry.items() if k != "epochs"} == {
        "dataset_id": made["heldout"],
        "content_hash": content_hash,
        "max_length": MAX_LENGTH,
        "system_prompt": None,
        "n_records": 5,
        "n_skipped": 1,  # TOO_LONG: no response token fits
    }
    left_out = [s["record_id"] for s in skipped if s["dataset"] == "warmup_eval" and "cut" not in s]
    assert left_out == ["too-long"]
    losses = [e["loss"] for e in entry["epochs"]]
    assert losses == pytest.approx(_reference(made["heldout"], rows), rel=1e-5)
    notes = _notes(first)
    assert any(n.startswith("warmup_eval: left out 1 held-out records") for n in notes), notes
    assert any(n.startswith(f"held-out loss of dataset {made['heldout']}") for n in notes), notes
    png = _blobs().get_bytes(tasks.warmup_plot_key(key, "png"))
    assert png.startswith(b"\x89PNG")

    # the same content under another id, on the reused run: nothing is computed again
    def not_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the held-out loss was computed again")

    computed = evaluation.heldout_loss_per_epoch
    monkeypatch.setattr(evaluation, "heldout_loss_per_epoch", not_again)
    second = _value(made, "twin", monkeypatch)
    notes = _notes(second)
    assert any(n.startswith("reused warmup run") for n in notes), notes
    assert f"reused the held-out loss of dataset {made['twin']} on warmup run" in " ".join(notes)
    assert _run()[0]["heldout"] == [entry]
    monkeypatch.setattr(evaluation, "heldout_loss_per_epoch", computed)

    third = _value(made, "other", monkeypatch)
    curve, rows, _ = _run()
    assert [e["dataset_id"] for e in curve["heldout"]] == [made["heldout"], made["other"]]
    other = curve["heldout"][1]
    assert other["n_records"] == 5 and other["n_skipped"] == 0
    assert [e["loss"] for e in other["epochs"]] == pytest.approx(
        _reference(made["other"], rows), rel=1e-5
    )
    assert _blobs().get_bytes(tasks.warmup_plot_key(key, "png")) != png  # redrawn with both
    assert any(n.startswith(f"held-out loss of dataset {made['other']}") for n in _notes(third))

    with SessionLocal() as session:  # the API's read model of the run
        run = session.scalars(select(WarmupRun)).one()
        read = warmup_runs.to_read(run)
    assert read.curve is not None
    assert [h.dataset_id for h in read.curve.heldout] == [made["heldout"], made["other"]]
    assert read.curve.heldout[0].epochs[1].loss == entry["epochs"][1]["loss"]
