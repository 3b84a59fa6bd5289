"""TracIn as published: "tracin" now pairs plain gradients on both sides; the Adam-pool inner
product it used to compute is "tracin_adam", and existing "tracin" valuations (scored that way)
are renamed so their method says what their scores are.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "'less', 'tracin', 'nice', 'datainf', 'nice_if'"
_NEW = "'less', 'tracin', 'tracin_adam', 'nice', 'datainf', 'nice_if'"


def _methods(methods: str) -> None:
    with op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.create_check_constraint(op.f("ck_valuations_method"), f"method IN ({methods})")


def upgrade() -> None:
    _methods(_NEW)
    op.execute(sa.text("UPDATE valuations SET method = 'tracin_adam' WHERE method = 'tracin'"))


def downgrade() -> None:
    count = op.get_bind().scalar(sa.text("SELECT count(*) FROM valuations WHERE method = 'tracin'"))
    if count:
        raise RuntimeError(
            f"{count} valuations use TracIn as published ('tracin'), which revision 0011 "
            "cannot express; delete them before downgrading"
        )
    op.execute(sa.text("UPDATE valuations SET method = 'tracin' WHERE method = 'tracin_adam'"))
    _methods(_OLD)
