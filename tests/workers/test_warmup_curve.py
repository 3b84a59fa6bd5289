"""A valuation's warmup on a migrated database records its training curve on the warmup run
(the loss of its first step recomputed by a plain forward of the untrained model) and plots
it; a warmup that cannot learn fails the job before anything is trained or stored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import func, select

from service.blobs import TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Job, Model, Valuation, WarmupRun
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID, tenant_scope
from tests.workers.conftest import insert_dataset
from workers.engine import data, lora, models
from workers.engine.data import collate
from workers.engine.synthetic import planted_tasks
from workers.tasks import valuation as tasks
from workers.tasks.jobs import run_tracked

pytestmark = pytest.mark.usefixtures("migrated")

N_POOL = 10  # planted_tasks(2): two records of each of five tasks


def _valuation(warmup: dict[str, Any]) -> str:
    rows = [dict(r) for r in planted_tasks(2, seed=0)]
    with SessionLocal() as session:
        dataset_id = insert_dataset(session, "pool", rows)
        model = Model(tenant_id=DEFAULT_TENANT_ID, name="tiny", source=models.TINY_LLAMA)
        job = Job(tenant_id=DEFAULT_TENANT_ID, kind="valuation", status="running")
        session.add_all([model, job])
        session.flush()
        valuation = Valuation(
            tenant_id=DEFAULT_TENANT_ID,
            job_id=job.id,
            model_id=model.id,
            pool_dataset_id=dataset_id,
            probe_dataset_id=dataset_id,
            method="less",
            settings={"warmup": warmup, "lora": {"r": 4, "alpha": 16.0}, "max_length": 64},
            skipped=[],
        )
        session.add(valuation)
        session.commit()
        return valuation.id


def _blobs() -> TenantBlobStore:
    return TenantBlobStore(blob_store_from_settings(get_settings()), DEFAULT_TENANT_ID)


def test_the_warmup_run_holds_its_curve_and_plot() -> None:
    # the whole pool in one batch: each epoch is one step on every record
    warmup = {"fraction": 1.0, "epochs": 3, "batch_size": N_POOL, "learning_rate": 3e-3}
    ctx = tasks.Context(_valuation(warmup))
    s = ctx.settings
    model, tokenizer = models.load_model_and_tokenizer(models.TINY_LLAMA)
    pool_tok, skipped = data.tokenize_examples(tokenizer, ctx.pool.examples, s.max_length)
    assert len(pool_tok) == N_POOL and not skipped

    # Reference: LoRA starts with B = 0, so step 1 sees the model as loaded; its loss is the
    # mean NLL over every response token of the pool, by a plain forward.
    reference_model, _ = models.load_model_and_tokenizer(models.TINY_LLAMA)
    batch = collate(pool_tok, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = reference_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    first_loss = float(
        F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
        )
    )

    peft_model = lora.attach_lora(model, tasks._lora_settings(s))
    fingerprint = models.model_fingerprint(ctx.model_source, model)
    with tenant_scope(DEFAULT_TENANT_ID):  # as run_tracked opens it for the task's tenant
        saved = tasks._warmup_checkpoints(ctx, peft_model, tokenizer, pool_tok, fingerprint)
    assert [ckpt.step for _, ckpt in saved] == [1, 2, 3]

    with SessionLocal() as session:
        run = session.scalars(select(WarmupRun)).one()
        curve, key, status = run.curve, run.content_key, run.status
    assert status == "complete" and curve is not None
    assert curve["step"] == [1, 2, 3]
    assert curve["loss"][0] == pytest.approx(first_loss, rel=1e-5)
    assert curve["loss"][2] < curve["loss"][0]  # it learns
    # warmup_ratio 0.03 of 3 steps: 1 warmup step at lr 0, then linear decay from 3e-3
    assert curve["learning_rate"] == pytest.approx([0.0, 3e-3, 1.5e-3])
    assert [ckpt.mean_lr for _, ckpt in saved] == pytest.approx(curve["learning_rate"])
    assert curve["epochs"] == [
        {"epoch": e, "step": e, "train_loss": curve["loss"][e - 1]} for e in (1, 2, 3)
    ]
    blobs = _blobs()
    assert blobs.get_bytes(tasks.warmup_plot_key(key, "png")).startswith(b"\x89PNG")
    assert b"<svg" in blobs.get_bytes(tasks.warmup_plot_key(key, "svg"))


def test_a_warmup_that_cannot_learn_fails_the_job_at_once() -> None:
    """Half of 10 records in a batch of 8, one epoch: one step, taken at learning rate 0."""
    valuation_id = _valuation({"fraction": 0.5, "epochs": 1, "batch_size": 8})
    ctx = tasks.Context(valuation_id)
    run_tracked(ctx.job, lambda: tasks.featurize_valuation(ctx))
    with SessionLocal() as session:
        job = session.get(Job, ctx.job.job_id)
        assert job is not None and job.status == "failed"
        error = job.error or ""
        runs = session.scalar(select(func.count()).select_from(WarmupRun))
    assert runs == 0
    assert error.startswith("settings.warmup: this warmup cannot learn: 5 training examples")
    assert "= 1 optimizer step" in error and "ceil(0.03 x 1) = 1 warmup step" in error
    assert "set warmup_ratio to 0" in error and f"the {N_POOL} pool records" in error
