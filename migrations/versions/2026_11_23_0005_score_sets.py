"""Score sets: per-record scores of the seed 003 toolbox (quality, text, diversity, importance,
rewards), and knn's dataset-level diversity report.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCORERS = "'quality', 'text', 'knn', 'random', 'bm25', 'dsir', 'rds', 'reward'"


def upgrade() -> None:
    op.create_table(
        "score_sets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("scorer", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=True),
        sa.Column("probe_dataset_id", sa.String(length=32), nullable=True),
        sa.Column("reward_spec_id", sa.String(length=32), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("values_blob_key", sa.String(length=1024), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("n_records", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"scorer IN ({SCORERS})", name=op.f("ck_score_sets_scorer")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_score_sets_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_score_sets_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_score_sets_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["probe_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_score_sets_probe_dataset_id_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["reward_spec_id"],
            ["reward_specs.id"],
            name=op.f("fk_score_sets_reward_spec_id_reward_specs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_sets")),
        sa.UniqueConstraint("job_id", name=op.f("uq_score_sets_job_id")),
    )
    op.create_index(op.f("ix_score_sets_dataset_id"), "score_sets", ["dataset_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_score_sets_dataset_id"), table_name="score_sets")
    op.drop_table("score_sets")
