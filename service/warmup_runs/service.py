"""Warmup-run rules. No commits here: the endpoint commits.

A warmup run is a series of LoRA checkpoints. Valuations train their own (``origin``
"warmup"); a user may upload one (``origin`` "upload"): one safetensors adapter per checkpoint
with its step and learning rate, which is all a strategy study needs. An upload is checked
completely before anything is written, then its files are stored, then its rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from service.blobs import BlobStore
from service.db.base import new_id
from service.db.models import Checkpoint, WarmupRun
from service.errors import Conflict, InvalidInput, NotFound
from service.models import repository as models
from service.pagination import Page, Pagination, newest_first
from service.warmup_runs import repository
from service.warmup_runs.adapters import (
    AdapterFile,
    LoraLayout,
    check_same_tensors,
    lora_layout,
    read_adapter_file,
)
from service.warmup_runs.schemas import CheckpointRead, CurveRead, LoraRead, WarmupRunRead

log = logging.getLogger(__name__)

PLOT_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}

MAX_STEP = 2**31 - 1
"""Checkpoint.step is a 32-bit integer column."""


@dataclass(frozen=True)
class RunUpload:
    """The form of ``POST /v1/warmup-runs``, parsed but not yet checked."""

    model_id: str
    lora_alpha: float
    steps: list[int]
    learning_rates: list[float]
    adapters: list[tuple[str, BinaryIO]]
    """(filename, seekable file) per checkpoint, in step order."""


@dataclass(frozen=True)
class CheckedCheckpoint:
    step: int
    learning_rate: float
    adapter: AdapterFile
    file: BinaryIO


@dataclass(frozen=True)
class CheckedUpload:
    model_id: str
    lora_alpha: float
    layout: LoraLayout
    checkpoints: list[CheckedCheckpoint]
    content_key: str


def upload_blob_key(run_id: str, step: int) -> str:
    return f"uploads/{run_id}/step-{step:010d}.safetensors"


def upload_content_key(
    model_id: str,
    lora_alpha: float,
    steps: list[int],
    learning_rates: list[float],
    hashes: list[str],
) -> str:
    """Everything an upload is made of, so the same upload again finds the run it made."""
    canonical = json.dumps(
        {
            "model_id": model_id,
            "lora_alpha": lora_alpha,
            "steps": steps,
            "learning_rates": learning_rates,
            "adapters": hashes,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "upload:" + hashlib.sha256(canonical.encode()).hexdigest()


def _check_schedule(upload: RunUpload) -> None:
    n = len(upload.adapters)
    if n == 0:
        raise InvalidInput(
            "a run needs at least one checkpoint: send one 'adapters' file per step",
            field="adapters",
        )
    counts = {"steps": len(upload.steps), "learning_rates": len(upload.learning_rates)}
    for field, count in counts.items():
        if count != n:
            raise InvalidInput(
                f"got {counts['steps']} steps, {counts['learning_rates']} learning_rates and {n} "
                "adapters files; send one of each per checkpoint",
                field=field,
            )
    for i, step in enumerate(upload.steps):
        if not 0 <= step <= MAX_STEP:
            raise InvalidInput(f"steps.{i} = {step} must be in [0, {MAX_STEP}]", field=f"steps.{i}")
        if i and step <= upload.steps[i - 1]:
            raise InvalidInput(
                f"steps must be strictly increasing: steps.{i} = {step} follows "
                f"{upload.steps[i - 1]}",
                field=f"steps.{i}",
            )
    for i, lr in enumerate(upload.learning_rates):
        if not (math.isfinite(lr) and lr > 0):
            raise InvalidInput(
                f"learning_rates.{i} = {lr} must be finite and > 0", field=f"learning_rates.{i}"
            )
    if not (math.isfinite(upload.lora_alpha) and upload.lora_alpha > 0):
        raise InvalidInput(
            f"lora_alpha = {upload.lora_alpha} must be finite and > 0", field="lora_alpha"
        )


def check_upload(session: Session, upload: RunUpload) -> CheckedUpload:
    """Every rule an upload must meet; reads the files but writes nothing."""
    _check_schedule(upload)
    if not models.exists(session, upload.model_id):
        raise InvalidInput(f"model {upload.model_id} does not exist", field="model_id")
    adapters = [
        read_adapter_file(f, filename, f"adapters.{i}")
        for i, (filename, f) in enumerate(upload.adapters)
    ]
    layout = lora_layout(adapters[0])
    for adapter in adapters[1:]:
        check_same_tensors(adapters[0], adapter)
    return CheckedUpload(
        model_id=upload.model_id,
        lora_alpha=upload.lora_alpha,
        layout=layout,
        checkpoints=[
            CheckedCheckpoint(step=step, learning_rate=lr, adapter=adapter, file=f)
            for step, lr, adapter, (_, f) in zip(
                upload.steps, upload.learning_rates, adapters, upload.adapters, strict=True
            )
        ],
        content_key=upload_content_key(
            upload.model_id,
            upload.lora_alpha,
            upload.steps,
            upload.learning_rates,
            [a.sha256 for a in adapters],
        ),
    )


def discard_blobs(blobs: BlobStore, run_id: str) -> None:
    """Remove the files of an upload whose rows were not stored (best effort, logged)."""
    try:
        blobs.delete_prefix(f"uploads/{run_id}/")
    except Exception:
        log.exception("could not delete the blobs of the abandoned upload %s", run_id)


def create_upload(
    session: Session, blobs: BlobStore, upload: CheckedUpload
) -> tuple[WarmupRun, bool]:
    """Store the files unchanged, then the rows; ``(run, created)``.

    The same content again gives the run it made before (``created`` False), also when a
    concurrent upload of it wins the unique ``content_key``.
    """
    existing = repository.get_by_content_key(session, upload.content_key)
    if existing is not None:
        return existing, False
    run_id = new_id()
    try:
        checkpoints = []
        for epoch, item in enumerate(upload.checkpoints, start=1):
            key = upload_blob_key(run_id, item.step)
            item.file.seek(0)
            blobs.put_file(key, item.file)  # streamed: an adapter may be gigabytes
            checkpoints.append(
                Checkpoint(
                    epoch=epoch,
                    step=item.step,
                    mean_lr=item.learning_rate,
                    adapter_blob_key=key,
                    optimizer_blob_key=None,
                    content_hash=item.adapter.sha256,
                )
            )
        run = WarmupRun(
            id=run_id,
            content_key=upload.content_key,
            origin="upload",
            model_id=upload.model_id,
            pool_dataset_id=None,
            settings={
                "lora": {
                    "r": upload.layout.r,
                    "alpha": upload.lora_alpha,
                    "dropout": 0.0,
                    "target_modules": list(upload.layout.target_modules),
                }
            },
            status="complete",
            n_train=None,
            checkpoints=checkpoints,
        )
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        discard_blobs(blobs, run_id)
        existing = repository.get_by_content_key(session, upload.content_key)
        if existing is None:
            raise
        return existing, False
    except BaseException:
        discard_blobs(blobs, run_id)
        raise
    return run, True


def get_run(session: Session, run_id: str) -> WarmupRun:
    run = repository.get(session, run_id)
    if run is None:
        raise NotFound(f"warmup run {run_id} not found", field="warmup_run_id")
    return run


def to_read(run: WarmupRun) -> WarmupRunRead:
    return WarmupRunRead(
        id=run.id,
        origin=run.origin,
        model_id=run.model_id,
        pool_dataset_id=run.pool_dataset_id,
        status=run.status,
        lora=LoraRead.model_validate(run.settings["lora"]),
        warmup=run.settings.get("warmup"),
        n_train=run.n_train,
        created_at=run.created_at,
        checkpoints=[
            CheckpointRead(
                epoch=c.epoch,
                step=c.step,
                learning_rate=c.mean_lr,
                has_optimizer_state=c.optimizer_blob_key is not None,
            )
            for c in run.checkpoints
        ],
        curve=None if run.curve is None else CurveRead.model_validate(run.curve),
        plots=(
            {fmt: f"/v1/warmup-runs/{run.id}/plot.{fmt}" for fmt in PLOT_FORMATS}
            if _has_plot(run)
            else None
        ),
    )


def _has_plot(run: WarmupRun) -> bool:
    return run.origin == "warmup" and run.status == "complete" and run.curve is not None


def plot_key(session: Session, run_id: str, fmt: str) -> str:
    """Blob key of a Sift-trained run's curve figure, as ``workers.tasks.valuation.
    warmup_plot_key`` writes it; 404 for runs without a curve, 409 while it trains."""
    run = get_run(session, run_id)
    if run.origin != "warmup" or run.curve is None and run.status == "complete":
        why = (
            "it was uploaded (trained elsewhere)"
            if run.origin != "warmup"
            else "it was trained before curves were recorded"
        )
        raise NotFound(f"warmup run {run_id} has no training curve: {why}")
    if not _has_plot(run):
        raise Conflict(
            f"warmup run {run_id} has status {run.status!r}; its plot exists once it is complete"
        )
    return f"warmup/{run.content_key}/curve.{fmt}"


def list_runs(session: Session, page: Pagination) -> Page[WarmupRunRead]:
    rows, total = newest_first(session, WarmupRun, page, selectinload(WarmupRun.checkpoints))
    return Page(items=[to_read(r) for r in rows], total=total, limit=page.limit, offset=page.offset)
