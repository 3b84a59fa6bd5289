"""Method "self_influence_token_weighted": each pool record's self-influence times its response
tokens (``workers.engine.self_influence``). Only the method check of ``valuations`` changes.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = (
    "'less', 'tracin', 'tracin_adam', 'nice', 'datainf', 'nice_if', 'self_influence', "
    "'self_influence_adam'"
)
_NEW = _OLD + ", 'self_influence_token_weighted'"

_CHILDREN = ("samples", "scores", "selections")
"""The tables whose rows name a valuation (scores and selections ON DELETE CASCADE)."""


@contextmanager
def _rebuilding_valuations() -> Iterator[None]:
    """SQLite alters ``valuations`` by rebuilding it (batch mode: copy, DROP, rename), and with
    foreign keys on the DROP deletes every score and selection by cascade: their rows are set
    aside and put back around it (as revision 0013 does)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for table in _CHILDREN:
            op.execute(sa.text(f"CREATE TEMP TABLE _kept_{table} AS SELECT * FROM {table}"))
            op.execute(sa.text(f"DELETE FROM {table}"))
    yield
    if sqlite:
        for table in _CHILDREN:
            op.execute(sa.text(f"INSERT INTO {table} SELECT * FROM _kept_{table}"))
            op.execute(sa.text(f"DROP TABLE _kept_{table}"))


def _method_check(values: str) -> None:
    with _rebuilding_valuations(), op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.create_check_constraint(op.f("ck_valuations_method"), f"method IN ({values})")


def upgrade() -> None:
    _method_check(_NEW)


def downgrade() -> None:
    count = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM valuations WHERE method = 'self_influence_token_weighted'")
    )
    if count:
        raise RuntimeError(
            f"{count} token-weighted self-influence valuations exist, which revision 0014 "
            "cannot express; delete them before downgrading"
        )
    _method_check(_OLD)
