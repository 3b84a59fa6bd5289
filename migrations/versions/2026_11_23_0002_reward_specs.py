"""NICE: reward specs, prompt-only record counts, the "nice" method, policy feature sets and
the samples audit table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reward_specs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reward_specs")),
        sa.UniqueConstraint("name", name=op.f("uq_reward_specs_name")),
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("n_prompt_only", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("valuations") as batch:
        batch.add_column(sa.Column("reward_spec_id", sa.String(length=32), nullable=True))
        batch.create_foreign_key(
            op.f("fk_valuations_reward_spec_id_reward_specs"),
            "reward_specs",
            ["reward_spec_id"],
            ["id"],
        )
        batch.create_index(op.f("ix_valuations_reward_spec_id"), ["reward_spec_id"])
        batch.add_column(sa.Column("assist_dataset_id", sa.String(length=32), nullable=True))
        batch.create_foreign_key(
            op.f("fk_valuations_assist_dataset_id_datasets"),
            "datasets",
            ["assist_dataset_id"],
            ["id"],
        )
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.create_check_constraint(
            op.f("ck_valuations_method"), "method IN ('less', 'tracin', 'nice')"
        )
    with op.batch_alter_table("feature_sets") as batch:
        batch.drop_constraint(op.f("ck_feature_sets_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_feature_sets_kind"), "kind IN ('sgd', 'adam', 'policy')"
        )
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("valuation_id", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("probe_record_id", sa.String(length=255), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("n_tokens", sa.Integer(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["valuation_id"],
            ["valuations.id"],
            name=op.f("fk_samples_valuation_id_valuations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
    )
    op.create_index(
        op.f("ix_samples_valuation_id_epoch_probe_record_id_sample_index"),
        "samples",
        ["valuation_id", "epoch", "probe_record_id", "sample_index"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_samples_valuation_id_epoch_probe_record_id_sample_index"), table_name="samples"
    )
    op.drop_table("samples")
    with op.batch_alter_table("feature_sets") as batch:
        batch.drop_constraint(op.f("ck_feature_sets_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_feature_sets_kind"), "kind IN ('sgd', 'adam')")
    with op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.create_check_constraint(op.f("ck_valuations_method"), "method IN ('less', 'tracin')")
        batch.drop_constraint(op.f("fk_valuations_assist_dataset_id_datasets"), type_="foreignkey")
        batch.drop_column("assist_dataset_id")
        batch.drop_index(op.f("ix_valuations_reward_spec_id"))
        batch.drop_constraint(op.f("fk_valuations_reward_spec_id_reward_specs"), type_="foreignkey")
        batch.drop_column("reward_spec_id")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("n_prompt_only")
    op.drop_table("reward_specs")
