"""Settings, read once from ``SIFT_*`` environment variables (and an optional ``.env``).

S3 credentials are not settings: boto3 reads the standard ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION`` variables itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIFT_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    database_url: str = Field(
        default="sqlite:///.sift/sift.db",
        description="SQLAlchemy URL; postgresql:// URLs are run with the psycopg 3 driver",
    )
    blob_url: str = Field(
        default="file://.sift/blobs",
        description="file://<dir> (relative to the working directory, or file:///abs) "
        "or s3://bucket/optional/prefix",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto)"
    )
    broker_url: str = Field(
        default="memory://localhost/", description="Celery broker; memory:// is in-process"
    )
    broker_visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="Redis: an unacknowledged task (its worker died) is redelivered after this",
    )
    embedded_worker: bool = Field(
        default=True, description="`sift serve` also runs a worker in-process (development)"
    )
    page_size_max: int = Field(default=1000, ge=1)
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_checkpoint_upload_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        description="one checkpoint-run upload (POST /v1/warmup-runs, all its adapter files)",
    )
    check_model_paths: bool = Field(
        default=True, description="a model given as a local path must exist and hold config.json"
    )

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.env == "production" and self.broker_url.startswith("memory://"):
            raise ValueError(
                "SIFT_BROKER_URL=memory:// only reaches a worker inside the same process; "
                "set a real broker (e.g. redis://...) when SIFT_ENV=production"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
