"""Initial schema: datasets, records, models, jobs, valuations, warmup runs, checkpoints,
feature sets, scores and selections.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 09:29:48.422149
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("n_records", sa.Integer(), nullable=False),
        sa.Column("n_duplicates", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("subtask", sa.String(length=255), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_records_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records")),
        sa.UniqueConstraint(
            "dataset_id", "record_id", name=op.f("uq_records_dataset_id_record_id")
        ),
    )
    op.create_index(
        op.f("ix_records_dataset_id_position"), "records", ["dataset_id", "position"], unique=False
    )
    op.create_table(
        "warmup_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("content_key", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("pool_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('running', 'complete')", name=op.f("ck_warmup_runs_status")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_warmup_runs_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["pool_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_warmup_runs_pool_dataset_id_datasets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_warmup_runs")),
        sa.UniqueConstraint("content_key", name=op.f("uq_warmup_runs_content_key")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("warmup_run_id", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("mean_lr", sa.Float(), nullable=False),
        sa.Column("adapter_blob_key", sa.String(length=1024), nullable=False),
        sa.Column("optimizer_blob_key", sa.String(length=1024), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["warmup_run_id"],
            ["warmup_runs.id"],
            name=op.f("fk_checkpoints_warmup_run_id_warmup_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint(
            "warmup_run_id", "epoch", name=op.f("uq_checkpoints_warmup_run_id_epoch")
        ),
    )
    op.create_table(
        "valuations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("pool_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("probe_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("warmup_run_id", sa.String(length=32), nullable=True),
        sa.Column("score_blob_key", sa.String(length=1024), nullable=True),
        sa.Column("n_scored", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("method IN ('less', 'tracin')", name=op.f("ck_valuations_method")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_valuations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_valuations_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["pool_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_valuations_pool_dataset_id_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["probe_dataset_id"],
            ["datasets.id"],
            name=op.f("fk_valuations_probe_dataset_id_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["warmup_run_id"],
            ["warmup_runs.id"],
            name=op.f("fk_valuations_warmup_run_id_warmup_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_valuations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_valuations_job_id")),
    )
    op.create_index(op.f("ix_valuations_model_id"), "valuations", ["model_id"], unique=False)
    op.create_index(
        op.f("ix_valuations_pool_dataset_id"), "valuations", ["pool_dataset_id"], unique=False
    )
    op.create_index(
        op.f("ix_valuations_probe_dataset_id"), "valuations", ["probe_dataset_id"], unique=False
    )
    op.create_table(
        "feature_sets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("content_key", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("n_records", sa.Integer(), nullable=False),
        sa.Column("shard_size", sa.Integer(), nullable=False),
        sa.Column("n_shards", sa.Integer(), nullable=False),
        sa.Column("blob_prefix", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('sgd', 'adam')", name=op.f("ck_feature_sets_kind")),
        sa.CheckConstraint(
            "status IN ('building', 'complete')", name=op.f("ck_feature_sets_status")
        ),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_feature_sets_checkpoint_id_checkpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_feature_sets_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_sets")),
        sa.UniqueConstraint("content_key", name=op.f("uq_feature_sets_content_key")),
    )
    op.create_index(
        op.f("ix_feature_sets_dataset_id"), "feature_sets", ["dataset_id"], unique=False
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("valuation_id", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("per_subtask", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["valuation_id"],
            ["valuations.id"],
            name=op.f("fk_scores_valuation_id_valuations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
        sa.UniqueConstraint("valuation_id", "rank", name=op.f("uq_scores_valuation_id_rank")),
    )
    op.create_index(
        op.f("ix_scores_valuation_id_record_id"),
        "scores",
        ["valuation_id", "record_id"],
        unique=False,
    )
    op.create_table(
        "selections",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("valuation_id", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("n_selected", sa.Integer(), nullable=False),
        sa.Column("record_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "rule IN ('top_k', 'top_fraction', 'threshold')", name=op.f("ck_selections_rule")
        ),
        sa.ForeignKeyConstraint(
            ["valuation_id"],
            ["valuations.id"],
            name=op.f("fk_selections_valuation_id_valuations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_selections")),
    )
    op.create_index(
        op.f("ix_selections_valuation_id"), "selections", ["valuation_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_selections_valuation_id"), table_name="selections")
    op.drop_table("selections")
    op.drop_index(op.f("ix_scores_valuation_id_record_id"), table_name="scores")
    op.drop_table("scores")
    op.drop_index(op.f("ix_feature_sets_dataset_id"), table_name="feature_sets")
    op.drop_table("feature_sets")
    op.drop_index(op.f("ix_valuations_probe_dataset_id"), table_name="valuations")
    op.drop_index(op.f("ix_valuations_pool_dataset_id"), table_name="valuations")
    op.drop_index(op.f("ix_valuations_model_id"), table_name="valuations")
    op.drop_table("valuations")
    op.drop_table("checkpoints")
    op.drop_table("warmup_runs")
    op.drop_index(op.f("ix_records_dataset_id_position"), table_name="records")
    op.drop_table("records")
    op.drop_table("models")
    op.drop_table("jobs")
    op.drop_table("datasets")
