"""DataInf and NICE-IF: the "datainf" and "nice_if" valuation methods.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _methods(methods: str) -> None:
    with op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.create_check_constraint(op.f("ck_valuations_method"), f"method IN ({methods})")


def upgrade() -> None:
    _methods("'less', 'tracin', 'nice', 'datainf', 'nice_if'")


def downgrade() -> None:
    count = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM valuations WHERE method IN ('datainf', 'nice_if')")
    )
    if count:
        raise RuntimeError(
            f"{count} datainf/nice_if valuations exist; delete them before downgrading"
        )
    _methods("'less', 'tracin', 'nice'")
