"""Strategy studies (seed 001): the studies table, summed-loss features ("sgd_sum"), and
uploaded checkpoint runs (warmup_runs.origin "upload": no pool, no Adam moments).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _feature_kinds(kinds: str) -> None:
    with op.batch_alter_table("feature_sets") as batch:
        batch.drop_constraint(op.f("ck_feature_sets_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_feature_sets_kind"), f"kind IN ({kinds})")


def upgrade() -> None:
    _feature_kinds("'sgd', 'adam', 'policy', 'sgd_sum'")
    with op.batch_alter_table("warmup_runs") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(length=16), server_default="warmup", nullable=False)
        )
        batch.alter_column("pool_dataset_id", existing_type=sa.String(length=32), nullable=True)
        batch.create_check_constraint(
            op.f("ck_warmup_runs_origin"), "origin IN ('warmup', 'upload')"
        )
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column(
            "optimizer_blob_key", existing_type=sa.String(length=1024), nullable=True
        )
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("warmup_run_id", sa.String(length=32), nullable=False),
        sa.Column("eval_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("probe_sets", sa.JSON(), nullable=False),
        sa.Column("pair_key", sa.String(length=200), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("plot_png_key", sa.String(length=1024), nullable=True),
        sa.Column("plot_svg_key", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_studies_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["warmup_run_id"],
            ["warmup_runs.id"],
            name=op.f("fk_studies_warmup_run_id_warmup_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["eval_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_studies_eval_dataset_id_datasets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("job_id", name=op.f("uq_studies_job_id")),
    )
    op.create_index(op.f("ix_studies_warmup_run_id"), "studies", ["warmup_run_id"])
    op.create_index(op.f("ix_studies_eval_dataset_id"), "studies", ["eval_dataset_id"])


def downgrade() -> None:
    bind = op.get_bind()
    blocking = {
        "sgd_sum feature sets": "SELECT count(*) FROM feature_sets WHERE kind = 'sgd_sum'",
        "uploaded checkpoint runs": "SELECT count(*) FROM warmup_runs WHERE origin = 'upload'",
    }
    for what, query in blocking.items():
        count = bind.scalar(sa.text(query))
        if count:
            raise RuntimeError(f"{count} {what} exist; delete them before downgrading")
    op.drop_index(op.f("ix_studies_eval_dataset_id"), table_name="studies")
    op.drop_index(op.f("ix_studies_warmup_run_id"), table_name="studies")
    op.drop_table("studies")
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column(
            "optimizer_blob_key", existing_type=sa.String(length=1024), nullable=False
        )
    with op.batch_alter_table("warmup_runs") as batch:
        batch.drop_constraint(op.f("ck_warmup_runs_origin"), type_="check")
        batch.alter_column("pool_dataset_id", existing_type=sa.String(length=32), nullable=False)
        batch.drop_column("origin")
    _feature_kinds("'sgd', 'adam', 'policy'")
