"""Evaluations: LoRA fine-tuned on each arm's training set, scored on a held-out target set.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("pool_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("target_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("reward_spec_id", sa.String(length=32), nullable=True),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("metric", sa.JSON(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("plot_png_key", sa.String(length=1024), nullable=True),
        sa.Column("plot_svg_key", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_evaluations_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["pool_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_evaluations_pool_dataset_id_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["target_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_evaluations_target_dataset_id_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["reward_spec_id"],
            ["reward_specs.id"],
            name=op.f("fk_evaluations_reward_spec_id_reward_specs"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_evaluations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_evaluations_job_id")),
    )
    for column in ("model_id", "pool_dataset_id", "target_dataset_id", "reward_spec_id"):
        op.create_index(op.f(f"ix_evaluations_{column}"), "evaluations", [column])
    op.create_index(op.f("ix_evaluations_tenant_id"), "evaluations", ["tenant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_tenant_id"), table_name="evaluations")
    for column in ("reward_spec_id", "target_dataset_id", "pool_dataset_id", "model_id"):
        op.drop_index(op.f(f"ix_evaluations_{column}"), table_name="evaluations")
    op.drop_table("evaluations")
