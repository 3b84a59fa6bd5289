"""Reward specs (named reward definitions for NICE) and prompt-only record counts.

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
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("n_prompt_only", sa.Integer(), server_default="0", nullable=False)
        )
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


def downgrade() -> None:
    op.drop_table("reward_specs")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("n_prompt_only")
