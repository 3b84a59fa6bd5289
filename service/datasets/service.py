"""Dataset rules. No commits here: the endpoint (or task) commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from service.datasets import repository
from service.datasets.parsing import ParsedDataset
from service.datasets.schemas import DatasetRead, DuplicateRead, RecordRead
from service.db.models import Dataset, Record
from service.errors import Conflict, NotFound
from service.pagination import Page, Pagination, newest_first


def create_dataset(session: Session, name: str, parsed: ParsedDataset) -> Dataset:
    """Insert a fully validated upload (records in their upload order)."""
    dataset = Dataset(
        name=name,
        n_records=len(parsed.records),
        n_duplicates=len(parsed.duplicates),
        n_prompt_only=parsed.n_prompt_only,
        duplicates=parsed.duplicates,
        content_hash=parsed.content_hash,
    )
    session.add(dataset)
    session.flush()
    repository.insert_records(
        session,
        [
            {
                "tenant_id": dataset.tenant_id,
                "dataset_id": dataset.id,
                "record_id": r.record_id,
                "position": position,
                "subtask": r.subtask,
                "messages": r.messages,
                "metadata_": r.metadata,
                "raw": r.raw,
                "content_hash": r.content_hash,
            }
            for position, r in enumerate(parsed.records)
        ],
    )
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = repository.get(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found", field="dataset_id")
    return dataset


def to_read(dataset: Dataset, subtasks: dict[str, int]) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        name=dataset.name,
        n_records=dataset.n_records,
        n_duplicates=dataset.n_duplicates,
        n_prompt_only=dataset.n_prompt_only,
        duplicates=[DuplicateRead.model_validate(d) for d in dataset.duplicates],
        subtasks=subtasks,
        content_hash=dataset.content_hash,
        created_at=dataset.created_at,
    )


def read_many(session: Session, datasets: Sequence[Dataset]) -> list[DatasetRead]:
    counts = repository.subtask_counts(session, [d.id for d in datasets])
    return [to_read(d, counts[d.id]) for d in datasets]


def list_datasets(session: Session, page: Pagination) -> Page[DatasetRead]:
    rows, total = newest_first(session, Dataset, page)
    return Page(items=read_many(session, rows), total=total, limit=page.limit, offset=page.offset)


def list_records(session: Session, dataset_id: str, page: Pagination) -> Page[RecordRead]:
    get_dataset(session, dataset_id)
    rows, total = repository.records_page(session, dataset_id, page.limit, page.offset)
    return Page(
        items=[_record_read(r) for r in rows], total=total, limit=page.limit, offset=page.offset
    )


def _record_read(r: Record) -> RecordRead:
    return RecordRead.model_validate(
        {
            "record_id": r.record_id,
            "position": r.position,
            "subtask": r.subtask,
            "messages": r.messages,
            "metadata": r.metadata_,
        }
    )


def delete_dataset(session: Session, dataset_id: str) -> None:
    dataset = get_dataset(session, dataset_id)
    users = {
        "valuation": repository.valuations_using,
        "study": repository.studies_using,
        "score set": repository.score_sets_using,
        "curation": repository.curations_using,
    }
    for kind, using in users.items():
        ids = using(session, dataset_id)
        if ids:
            more = f" (and {len(ids) - 1} more)" if len(ids) > 1 else ""
            raise Conflict(
                f"dataset {dataset_id} is used by {kind} {ids[0]}{more}; it cannot be deleted",
                field="dataset_id",
            )
    if repository.has_cached_artifacts(session, dataset_id):
        raise Conflict(
            f"dataset {dataset_id} has cached warmup runs or feature sets", field="dataset_id"
        )
    session.delete(dataset)
    session.flush()
