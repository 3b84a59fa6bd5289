"""Dataset rules. No commits here: the endpoint (or task) commits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy.orm import Session

from service import deletion
from service.datasets import repository
from service.datasets.parsing import DatasetBuilder, ParsedRecord, RawRecord
from service.datasets.schemas import DatasetRead, DuplicateRead, RecordRead
from service.db.models import Dataset, Record
from service.deletion import Deleted
from service.errors import NotFound
from service.pagination import Page, Pagination, newest_first


class DatasetUpload:
    """One upload on its way into the database, stored as it is parsed.

    The dataset row is added with the first batch of kept records, later batches follow as
    they arrive, and the name, counts and content hash are set by :meth:`finish`. All of it is
    in the caller's transaction and nothing here commits: the endpoint commits a complete
    upload and rolls back a rejected one, so no half-written dataset is ever visible.
    """

    def __init__(self, session: Session, source_field: str) -> None:
        self.session = session
        self.dataset: Dataset | None = None
        self._builder = DatasetBuilder(self._insert, source_field)

    def add(self, items: Iterable[RawRecord]) -> None:
        self._builder.add_all(items)

    def finish(self, name: str) -> Dataset:
        summary = self._builder.finish()
        dataset = self._row()
        dataset.name = name
        dataset.n_records = summary.n_records
        dataset.n_duplicates = len(summary.duplicates)
        dataset.n_prompt_only = summary.n_prompt_only
        dataset.duplicates = summary.duplicates
        dataset.content_hash = summary.content_hash
        self.session.flush()
        return dataset

    def close(self) -> None:
        """Free the duplicate index (the rows are the transaction's business)."""
        self._builder.close()

    def _row(self) -> Dataset:
        if self.dataset is None:
            self.dataset = Dataset(
                name="",
                n_records=0,
                n_duplicates=0,
                n_prompt_only=0,
                duplicates=[],
                content_hash="",
            )
            self.session.add(self.dataset)
            self.session.flush()
        return self.dataset

    def _insert(self, first_position: int, records: list[ParsedRecord]) -> None:
        dataset = self._row()
        repository.insert_records(
            self.session,
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
                for position, r in enumerate(records, start=first_position)
            ],
        )


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


def list_records(
    session: Session,
    dataset_id: str,
    page: Pagination,
    record_ids: Sequence[str] | None = None,
) -> Page[RecordRead]:
    """A page of the dataset's records; with ``record_ids``, of those records only."""
    get_dataset(session, dataset_id)
    rows, total = repository.records_page(session, dataset_id, page.limit, page.offset, record_ids)
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


def delete_dataset(session: Session, dataset_id: str, *, cascade: bool = False) -> Deleted:
    """Delete a dataset and its records (``service.deletion``): a 409 names the valuations,
    studies, score sets and curations that read it, unless ``cascade`` deletes them too. The
    caches computed from it go when nothing references them any more."""
    return deletion.delete_resource(session, "dataset", dataset_id, cascade=cascade)
