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
