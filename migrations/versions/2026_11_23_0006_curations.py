"""Curations: selections composed from score sets (filters, rank or diversity pick, quotas).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 20:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "curations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=True),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("record_ids", sa.JSON(), nullable=True),
        sa.Column("n_selected", sa.Integer(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_curations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_curations_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_curations_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_curations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_curations_job_id")),
    )
    op.create_index(op.f("ix_curations_dataset_id"), "curations", ["dataset_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_curations_dataset_id"), table_name="curations")
    op.drop_table("curations")
