from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from service.datasets.imports import ColumnMap

EXAMPLE_RECORDS: list[JsonValue] = [
    {
        "id": "ex-1",
        "prompt": "Name a prime number greater than 10.",
        "response": "11",
        "subtask": "math",
    },
    {
        "messages": [
            {"role": "system", "content": "You are concise."},
            {"role": "user", "content": "Translate 'bonjour' to English."},
            {"role": "assistant", "content": "Hello."},
        ],
        "subtask": "translation",
        "metadata": {"source": "demo"},
    },
]


class DatasetCreate(BaseModel):
    """JSON form of an upload (the other form is multipart: a JSONL ``file`` and a ``name``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "demo-pool", "records": EXAMPLE_RECORDS}]},
    )

    name: str = Field(min_length=1, max_length=200)
    records: list[Any] = Field(
        description="records as {prompt, response} or {messages: [...]}, optional id, subtask, "
        "metadata; no other field (put anything else in metadata)"
    )


class DuplicateRead(BaseModel):
    index: int = Field(description="0-based position of the skipped record in the upload")
    record_id: str
    duplicate_of: str = Field(description="record_id of the kept record with the same content")


class DatasetRead(BaseModel):
    id: str
    name: str
    n_records: int
    n_duplicates: int
    n_prompt_only: int = Field(
        description="records with a prompt but no response; only NICE probes with a reward "
        "that needs no label may have them"
    )
    duplicates: list[DuplicateRead]
    subtasks: dict[str, int] = Field(
        description="records per subtask (records without one omitted)"
    )
    content_hash: str
    created_at: datetime


class MessageRead(BaseModel):
    role: str
    content: str


class RecordRead(BaseModel):
    record_id: str
    position: int
    subtask: str | None
    messages: list[MessageRead]
    metadata: dict[str, Any]


class ImportSource(BaseModel):
    """Where a server-side import reads: a path under the operator's import roots, or a hub id
    (only where the operator allows the hub)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="a load_from_disk folder or a parquet / CSV / JSONL file (.gz allowed for "
        "CSV and JSONL), absolute or relative to the import roots (SIFT_IMPORT_ROOTS); its "
        "real location (links resolved) must be inside one",
    )
    hub: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="a Hugging Face hub dataset id, read with datasets.load_dataset (streaming); "
        "refused unless the operator set SIFT_IMPORT_HUB",
    )
    config: str | None = Field(
        default=None, min_length=1, max_length=200, description="the hub dataset's config name"
    )
    split: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="the split of a load_from_disk DatasetDict (needed when it has several) "
        "or of a hub dataset (needed)",
    )
    format: Literal["auto", "hf_disk", "parquet", "csv", "jsonl"] = Field(
        default="auto",
        description="auto: a folder is hf_disk, a file is told by its name (.parquet, .csv, "
        ".jsonl, .ndjson, optionally .gz)",
    )

    @model_validator(mode="after")
    def _one_place(self) -> ImportSource:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path and hub")
        if self.hub is None and self.config is not None:
            raise ValueError("config applies to a hub dataset only")
        return self


class DatasetImport(BaseModel):
    """JSON form of an import: a server-side source (the other form is multipart: an uploaded
    ``file``, a JSON ``mapping`` and a ``name``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "gsm8k-test",
                    "source": {"path": "gsm8k/test.parquet"},
                    "mapping": {"prompt": "question", "response": "answer"},
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    source: ImportSource
    mapping: ColumnMap
