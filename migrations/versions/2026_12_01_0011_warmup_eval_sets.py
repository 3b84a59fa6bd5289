"""Held-out sets for the warmup: a valuation may name a dataset whose response loss is measured
at every warmup checkpoint (stored on the warmup run's curve, under ``heldout``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("valuations") as batch:
        batch.add_column(sa.Column("warmup_eval_dataset_id", sa.String(length=32), nullable=True))
        batch.create_foreign_key(
            op.f("fk_valuations_warmup_eval_dataset_id_datasets"),
            "datasets",
            ["warmup_eval_dataset_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(
            op.f("fk_valuations_warmup_eval_dataset_id_datasets"), type_="foreignkey"
        )
        batch.drop_column("warmup_eval_dataset_id")
