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


class CurveRead(BaseModel):
    """The training curve of a Sift-trained warmup: one entry per optimizer step in
    ``step``, ``loss`` and ``learning_rate``, and the epochs' means."""

    step: list[int] = Field(description="1-based optimizer steps")
    loss: list[float] = Field(
        description="the batch's mean NLL per response token at that step, before its update"
    )
    learning_rate: list[float] = Field(description="the learning rate that step was taken with")
    epochs: list[EpochLossRead] = Field(description="one per finished epoch")


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
        "running); plotted at plot.png / plot.svg once complete. Null for uploads (trained "
        "elsewhere) and for runs trained before curves were recorded"
    )
    plots: dict[str, str] | None = Field(
        description="once complete with a curve: API paths of its figure (png, svg)"
    )
