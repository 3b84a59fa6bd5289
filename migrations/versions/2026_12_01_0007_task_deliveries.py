"""Task deliveries: how often the broker handed out each Celery task in flight, so a task whose
execution kills its worker fails its job after a bounded number of deliveries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_deliveries",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("task_name", sa.String(length=255), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("first_delivered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_delivered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_task_deliveries_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_task_deliveries")),
    )
    op.create_index(op.f("ix_task_deliveries_job_id"), "task_deliveries", ["job_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_task_deliveries_job_id"), table_name="task_deliveries")
    op.drop_table("task_deliveries")
