from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.valuations.schemas import ProgressRead
from service.webhooks.schemas import callback_url_field
from workers.contracts import Scorer, ScoreSetSettings

Order = Literal["asc", "desc"]


class ScoreSetCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "pool quality",
                    "scorer": "quality",
                    "dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "model_id": "5f0c6b7e9a3d4c2b8e1f0a9d7c6b5a41",
                    "settings": {"max_length": 512, "ifd": True},
                },
                {
                    "scorer": "bm25",
                    "dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "probe_dataset_id": "9a8b7c6d5e4f43218a9b8c7d6e5f4a3b",
                },
                {
                    "scorer": "reward",
                    "dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "reward_spec_id": "3c2b1a0f9e8d47c6b5a4f3e2d1c0b9a8",
                },
            ]
        },
    )

    name: str | None = Field(None, max_length=200)
    scorer: Scorer = Field(
        description="quality (model: nll, perplexity, el2n, uncertainty; IFD with settings.ifd) "
        "| text (lengths, TTR, MTLD, distinct-n) | knn (distance to the k-th nearest neighbour) "
        "| random | bm25 | dsir | rds (importance against probe_dataset_id) | reward (each "
        "response's reward under reward_spec_id)"
    )
    dataset_id: str = Field(description="the records to score")
    model_id: str | None = Field(
        None,
        description="needed by 'quality', and by 'knn' and 'rds' with settings.embedding 'lm'; "
        "refused otherwise",
    )
    probe_dataset_id: str | None = Field(
        None,
        description="importance scorers (random, bm25, dsir, rds) only: the probes records are "
        "scored against (aggregated per probe subtask)",
    )
    reward_spec_id: str | None = Field(
        None,
        description="scorer 'reward' only: the reward spec each record's response is scored by "
        "(as a response to the record's prompt); the label kinds (exact_match, contains, regex, "
        "numeric) compare with the record's metadata.label, which every record must then have, "
        "python_tests runs the record's metadata.test and metadata.entry_point",
    )
    callback_url: str | None = callback_url_field()
    settings: ScoreSetSettings = Field(default_factory=lambda: ScoreSetSettings.model_validate({}))


class Quantiles(BaseModel):
    p01: float | None
    p05: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    p95: float | None
    p99: float | None


class Histogram(BaseModel):
    edges: list[float] = Field(description="bin edges, one more than counts")
    counts: list[int]


class ColumnSummary(BaseModel):
    count: int = Field(description="records with a value")
    missing: int = Field(description="records whose value is undefined (null)")
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: Quantiles
    histogram: Histogram
    plot: str | None = Field(description="API path of the histogram as a PNG")


class DistributionRead(ColumnSummary):
    score_set_id: str
    column: str


class ValuationDistributionRead(ColumnSummary):
    """A valuation's scores as a distribution: the same summary and histogram as a score
    set's column (``workers.engine.summaries.column_summary``, 20 equal-width bins)."""

    valuation_id: str
    method: str


class DiversityReportRead(BaseModel):
    """Dataset-level diversity of a knn set's embeddings (seed 003 §4.1-4.2)."""

    n: int = Field(description="records")
    vendi: float = Field(
        description="Vendi score with the cosine kernel: the effective number of distinct "
        "records, in [1, min(n, embedding dim)]"
    )
    knn_mean: float = Field(
        description="D^kNN (eq. 28): the mean distance to the k-th nearest other record, i.e. "
        "the mean of the knn_distance column"
    )
    k: int
    inertia: float = Field(description="D^inertia (eq. 29) of seeded k-means on the unit rows")
    n_clusters: int
    seed: int = Field(description="the k-means seed (settings.seed)")


class ScoreSetRead(BaseModel):
    id: str
    job_id: str
    name: str | None
    scorer: str
    dataset_id: str
    model_id: str | None
    probe_dataset_id: str | None
    reward_spec_id: str | None
    settings: dict[str, Any]
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None
    progress: ProgressRead
    cancel_requested: bool
    error: str | None
    notes: list[str]
    timings: dict[str, float] = Field(description="seconds per stage")
    n_records: int | None
    columns: list[str] | None = Field(
        description="once succeeded: the score columns, e.g. quality: nll, perplexity, ...; "
        "importance scorers: score and subtask:<name> per probe subtask"
    )
    summary: dict[str, ColumnSummary] | None = Field(
        description="once succeeded: per column its count, missing, mean, std, min, max, "
        "quantiles and histogram"
    )
    report: DiversityReportRead | None = Field(
        description="scorer 'knn' once succeeded: the dataset-level diversity report of the "
        "same embeddings; null otherwise"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RecordValues(BaseModel):
    record_id: str
    values: dict[str, float | None] = Field(description="per column; null where undefined")


class CompareSide(BaseModel):
    score_set_id: str
    column: str
    order: Order


class TopKOverlap(BaseModel):
    k: int = Field(description="as requested, or n_common if fewer records are in common")
    overlap: int = Field(description="records in both top-k lists")
    jaccard: float | None = Field(description="overlap / union; null when k is 0")


class CompareRead(BaseModel):
    a: CompareSide
    b: CompareSide
    n_common: int = Field(description="records (by record_id) with a value in both columns")
    spearman: float | None = Field(
        description="rank correlation of the two rankings (each side's order; average ranks for "
        "ties) over the common records: positive when they agree; null "
        "with fewer than 2 of them or when a column is constant there"
    )
    top_k: TopKOverlap
