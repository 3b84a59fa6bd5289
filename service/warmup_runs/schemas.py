from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class LoraRead(BaseModel):
    r: int
    alpha: float
    dropout: float = Field(description="0 for uploaded runs (not known, and not needed)")
    target_modules: list[str]


class CheckpointRead(BaseModel):
    epoch: int = Field(description="1-based position of the checkpoint in the run")
    step: int = Field(description="optimizer steps taken when the adapter was saved")
    learning_rate: float = Field(
        description="mean learning rate of the steps before this checkpoint (uploads: as given)"
    )
    has_optimizer_state: bool = Field(
        description="Adam moments stored (Sift-trained runs); uploads have none"
    )


class EpochLossRead(BaseModel):
    epoch: int = Field(description="1-based; its checkpoint is the run's checkpoint of that epoch")
    step: int = Field(description="the optimizer step that ends the epoch")
    train_loss: float = Field(description="the mean of the epoch's step losses")


class HeldoutEpochRead(BaseModel):
    epoch: int = Field(description="1-based; the loss is measured at that epoch's checkpoint")
    step: int = Field(description="the optimizer step that ends the epoch")
    loss: float = Field(
        description="the mean over the held-out records of each record's mean NLL per "
        "response token (every record counts once), in eval mode (no dropout)"
    )


class HeldoutRead(BaseModel):
    dataset_id: str = Field(
        description="the held-out set it was first measured on (a valuation's "
        "warmup_eval_dataset_id; it may since have been deleted); the same content under "
        "another id reuses the entry"
    )
    content_hash: str = Field(description="the held-out set's content hash")
    max_length: int = Field(description="the valuation's max_length it was tokenized with")
    system_prompt: str | None = Field(description="the valuation's system prompt, if any")
    n_records: int = Field(description="held-out records scored")
    n_skipped: int = Field(
        description="held-out records left out: no response token fit in max_length"
    )
    epochs: list[HeldoutEpochRead] = Field(description="one per checkpoint of the run")


class CurveRead(BaseModel):
    """The training curve of a Sift-trained warmup: one entry per optimizer step in
    ``step``, ``loss`` and ``learning_rate``, the epochs' means, and the held-out loss per
    epoch of each held-out set a valuation on the run named (``warmup_eval_dataset_id``)."""

    step: list[int] = Field(description="1-based optimizer steps")
    loss: list[float] = Field(
        description="the batch's mean NLL per response token at that step, before its update"
    )
    learning_rate: list[float] = Field(description="the learning rate that step was taken with")
    epochs: list[EpochLossRead] = Field(description="one per finished epoch")
    heldout: list[HeldoutRead] = Field(
        default_factory=list,
        description="one per held-out set (content, max_length, system prompt) measured on the "
        "complete run; ask for one with POST /v1/valuations {'warmup_eval_dataset_id': ...}",
    )


class WarmupRunRead(BaseModel):
    id: str
    origin: str = Field(description="warmup (trained by a valuation) | upload")
    model_id: str
    pool_dataset_id: str | None = Field(description="the pool trained on; null for uploads")
    status: str = Field(description="running | complete")
    lora: LoraRead
    warmup: dict[str, Any] | None = Field(
        description="the warmup settings of a Sift-trained run; null for uploads"
    )
    n_train: int | None
    created_at: datetime
    checkpoints: list[CheckpointRead]
    curve: CurveRead | None = Field(
        description="Sift-trained runs: the training loss per step and per epoch (so far, while "
        "running) and the held-out loss per epoch of each held-out set measured on it; plotted "
        "at plot.png / plot.svg once complete. Null for uploads (trained elsewhere) and for "
        "runs trained before curves were recorded"
    )
    plots: dict[str, str] | None = Field(
        description="once complete with a curve: API paths of its figure (png, svg)"
    )
