"""Settings, read once from ``SIFT_*`` environment variables (and an optional ``.env``).

S3 credentials are not settings: boto3 reads the standard ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION`` variables itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.outbound import OutboundPolicy


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
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="how often a running task beats its row and its job"
    )
    heartbeat_stale_s: float = Field(
        default=60.0,
        gt=0,
        description="a running task silent this long lost its worker: the recovery sweep sends "
        "it again (so a killed worker's task is re-delivered within about this plus "
        "sweep_interval_s); a cancelled job with no live task is ended",
    )
    task_lost_s: float = Field(
        default=3600.0,
        gt=0,
        description="a task sent but never started this long was lost by the broker: it is "
        "sent again (on Redis, one that no queue holds is sent again after heartbeat_stale_s: "
        "a worker killed just after popping it, Redis restarted without persistence); so is a "
        "webhook delivery's task that no attempt took up (no worker on sift.events, or one "
        "that lost it)",
    )
    sweep_interval_s: float = Field(
        default=15.0, gt=0, description="how often each worker runs the recovery sweep"
    )
    max_task_deliveries: int = Field(
        default=3,
        ge=1,
        description="a task delivered more often than this, its worker dying during each "
        "delivery (e.g. a record whose program kills it), fails its job instead of coming back",
    )
    embedded_worker: bool = Field(
        default=True, description="`sift serve` also runs a worker in-process (development)"
    )
    page_size_max: int = Field(default=1000, ge=1)
    # webhook deliveries (workers.tasks.webhooks)
    webhook_retry_base_s: float = Field(
        default=10.0, gt=0, description="wait before a webhook's 2nd attempt; doubled after each"
    )
    webhook_retry_max_interval_s: float = Field(
        default=3600.0, gt=0, description="the longest delay between two webhook attempts"
    )
    webhook_retry_for_s: float = Field(
        default=86400.0,
        gt=0,
        description="a webhook delivery not accepted (2xx) this long after its event is given "
        "up (status failed); about 30 attempts with the defaults",
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="one webhook attempt's timeout, in all (name lookup, connects, sending, "
        "the answer's headers), not per phase",
    )
    webhook_redispatch_s: float = Field(
        default=60.0,
        gt=0,
        description="a due delivery whose attempt started and died (its lease, the timeout "
        "plus 30 s, ran out) is sent again by the recovery sweep once its task was sent this "
        "long ago; one whose task no attempt took up yet waits task_lost_s instead",
    )
    webhook_countdown_max_s: float = Field(
        default=300.0,
        ge=0,
        description="a webhook retry due within this is sent at once with a countdown; later "
        "ones by the recovery sweep when due (keep it below the broker's visibility timeout)",
    )
    webhook_rotation_grace_s: float = Field(
        default=86400.0,
        ge=0,
        description="after POST /v1/webhook-secret rotates the callback secret, deliveries "
        "carry a signature with the previous secret too, for this long",
    )
    # Load limits (service/limits.py sizes the request threads and the database pool from these)
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes `sift serve` runs (uvicorn workers, one port): a process "
        "uses about one core; several need a real broker and no embedded worker, and each "
        "holds its own database pool (service/limits.py)",
    )
    max_concurrent_requests: int = Field(
        default=16,
        ge=1,
        description="requests the API runs at once, per process (/healthz and /metrics aside); "
        "the request threads and the database pool are sized from it",
    )
    request_queue_timeout_s: float = Field(
        default=0.5,
        ge=0,
        description="how long a request beyond max_concurrent_requests waits for a slot before "
        "a 503 `overloaded` with Retry-After (0: at once)",
    )
    db_pool_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="how long a session waits for a pooled database connection before a 503 "
        "with Retry-After (requests alone never exhaust the pool; this bounds the rest)",
    )
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="how long a process trusts an API key it has verified before reading it "
        "again (service/auth/keys.py KeyCache); a key revoked through this process's API is "
        "refused at once, one revoked elsewhere (the CLI, another API process) within this "
        "(0: read every request)",
    )
    max_upload_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="one dataset upload; a multipart JSONL file streams, so this bounds disk "
        "and database, not the API's memory",
    )
    max_json_upload_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="a dataset sent as a JSON body (read into memory whole; also at most "
        "max_upload_bytes)",
    )
    max_checkpoint_upload_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        description="one checkpoint-run upload (POST /v1/warmup-runs, all its adapter files)",
    )
    import_roots: str = Field(
        default="",
        description="comma-separated absolute folders that POST /v1/datasets/import may read "
        "server-side sources from (load_from_disk folders, parquet, CSV, JSONL files); "
        "`{tenant_id}` in an entry becomes the caller's tenant id (a folder per tenant); "
        "empty: server-side imports are refused (service/datasets/imports.py)",
    )
    import_hub: bool = Field(
        default=False,
        description="POST /v1/datasets/import may fetch a Hugging Face hub id with "
        "datasets.load_dataset (the API process then calls the hub; off by default)",
    )

    @field_validator("import_roots")
    @classmethod
    def _import_roots_absolute(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if entry and not entry.startswith("/"):
                raise ValueError(f"SIFT_IMPORT_ROOTS entry {entry!r} is not an absolute path")
        return value

    def import_root_list(self, tenant_id: str) -> list[str]:
        """The import roots for one tenant (``{tenant_id}`` filled in)."""
        return [
            e.strip().replace("{tenant_id}", tenant_id)
            for e in self.import_roots.split(",")
            if e.strip()
        ]

    check_model_paths: bool = Field(
        default=True,
        description="a model given as a local path must exist and be a folder with "
        "config.json, a .gguf file or a folder holding exactly one .gguf",
    )
    model_cache_dir: str = Field(
        default=".sift/model-cache",
        description="workers only: where a GGUF model source is converted to safetensors, "
        "once, under its content hash (share it between the workers of a host, or over a "
        "filesystem with flock, so each GGUF is converted once)",
    )
    outbound_allow: str = Field(
        default="",
        description="comma-separated CIDRs and exact host names that URLs called on a client's "
        "behalf (http judges, assist endpoints) may reach, also over plain http, e.g. "
        "10.0.0.0/8,judge.corp.example; empty: public https destinations only (workers.outbound)",
    )

    @field_validator("outbound_allow")
    @classmethod
    def _outbound_allow_entries(cls, value: str) -> str:
        OutboundPolicy.from_entries(value.split(","))  # raises ValueError naming the bad entry
        return value

    def outbound_policy(self) -> OutboundPolicy:
        """What workers.outbound enforces for this deployment (API and workers alike)."""
        return OutboundPolicy.from_entries(self.outbound_allow.split(","))

    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key (urlsafe base64 of 32 bytes) sealing client-supplied secrets "
        "(judge headers, tenant secrets); API and workers need the same. Required in "
        "production; in development it is created once in secret_key_file",
    )
    secret_key_file: str = Field(
        default=".sift/secret.key",
        description="development only: where the generated secret_key is kept (mode 0600)",
    )
    api_key_file: str = Field(
        default=".sift/api-key",
        description="development only: where the first local admin API key is written "
        "(mode 0600) when the database has no key yet",
    )
    # Observability (service/observability.py, workers/observability.py)
    log_format: Literal["plain", "json"] = Field(
        default="plain",
        description="plain: one readable line per record; json: one JSON object per line, with "
        "request_id (API) or task_id/task_name/job_id (workers) as fields",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the API's root log level (a worker takes --loglevel)"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="when set, GET /metrics needs `Authorization: Bearer <token>`; either way "
        "/metrics is for the scraper's network, not the internet",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="each worker process serves Prometheus metrics on this port (unset: off; "
        "one port per worker process on a host)",
    )
    worker_metrics_host: str = Field(
        default="0.0.0.0", description="the address the worker metrics server binds"
    )

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.env == "production" and self.broker_url.startswith("memory://"):
            raise ValueError(
                "SIFT_BROKER_URL=memory:// only reaches a worker inside the same process; "
                "set a real broker (e.g. redis://...) when SIFT_ENV=production"
            )
        if self.env == "production" and self.secret_key is None:
            raise ValueError(
                "SIFT_SECRET_KEY is required when SIFT_ENV=production (it seals client "
                "secrets); generate one with `sift secret-key`"
            )
        if self.api_workers > 1 and (
            self.embedded_worker or self.broker_url.startswith("memory://")
        ):
            raise ValueError(
                "SIFT_API_WORKERS > 1 needs a real broker (SIFT_BROKER_URL=redis://...) and "
                "SIFT_EMBEDDED_WORKER=false: a memory:// broker and an embedded worker live in "
                "one process, which the other API processes cannot reach"
            )
        if self.secret_key is not None:
            from service.secrets import check_key

            check_key(self.secret_key.get_secret_value())
        return self


MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess mode: each process writes its samples to files in this
folder and ``/metrics`` in any of them sums them (``service.observability``). ``sift serve``
prepares it for several API processes, before any metric exists (here, not in
``service.observability``, so the CLI can name it without importing prometheus_client)."""


@lru_cache
def get_settings() -> Settings:
    return Settings()


def app_settings(app: Any) -> Settings:
    """The settings a FastAPI ``app`` runs with: :func:`get_settings`, or the override a test
    installed in ``app.dependency_overrides``. For code that runs outside a dependency (the
    middleware, the event loop's fast paths), where ``Depends(get_settings)`` is unavailable
    or would cost a thread hop."""
    settings: Settings = app.dependency_overrides.get(get_settings, get_settings)()
    return settings
