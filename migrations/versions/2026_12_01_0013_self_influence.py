"""Self-influence: methods "self_influence" and "self_influence_adam" value each pool record by
itself, so a valuation's probe_dataset_id may be NULL (for those methods only; the API checks
it) and method names grow past 16 characters; a selection's "order" says whether it took the
highest scores (desc, every earlier selection) or the lowest (asc); a valuation keeps the
summary and histogram of its scores (score_summary; NULL for those scored before).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "'less', 'tracin', 'tracin_adam', 'nice', 'datainf', 'nice_if'"
_NEW = _OLD + ", 'self_influence', 'self_influence_adam'"


_CHILDREN = ("samples", "scores", "selections")
"""The tables whose rows name a valuation (scores and selections ON DELETE CASCADE)."""


@contextmanager
def _rebuilding_valuations() -> Iterator[None]:
    """SQLite alters ``valuations`` by rebuilding it (batch mode: copy, DROP, rename), and with
    foreign keys on (``service.db.session``) the DROP deletes every score and selection by
    cascade (and fails on samples): their rows are set aside and put back around it. The
    pragma cannot be turned off inside the migration's transaction."""
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


def upgrade() -> None:
    with _rebuilding_valuations(), op.batch_alter_table("valuations") as batch:
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.alter_column("method", existing_type=sa.String(length=16), type_=sa.String(length=32))
        batch.alter_column("probe_dataset_id", existing_type=sa.String(length=32), nullable=True)
        batch.create_check_constraint(op.f("ck_valuations_method"), f"method IN ({_NEW})")
        batch.add_column(sa.Column("score_summary", sa.JSON(), nullable=True))
    with op.batch_alter_table("selections") as batch:
        batch.add_column(
            sa.Column("order", sa.String(length=4), nullable=False, server_default="desc")
        )
        batch.create_check_constraint(op.f("ck_selections_order"), "\"order\" IN ('desc', 'asc')")


def downgrade() -> None:
    bind = op.get_bind()
    count = bind.scalar(
        sa.text(
            "SELECT count(*) FROM valuations "
            "WHERE method IN ('self_influence', 'self_influence_adam')"
        )
    )
    ascending = bind.scalar(sa.text("SELECT count(*) FROM selections WHERE \"order\" = 'asc'"))
    if count or ascending:
        raise RuntimeError(
            f"{count} self-influence valuations and {ascending} lowest-first selections exist, "
            "which revision 0012 cannot express; delete them before downgrading"
        )
    with op.batch_alter_table("selections") as batch:
        batch.drop_constraint(op.f("ck_selections_order"), type_="check")
        batch.drop_column("order")
    with _rebuilding_valuations(), op.batch_alter_table("valuations") as batch:
        batch.drop_column("score_summary")
        batch.drop_constraint(op.f("ck_valuations_method"), type_="check")
        batch.alter_column("probe_dataset_id", existing_type=sa.String(length=32), nullable=False)
        batch.alter_column("method", existing_type=sa.String(length=32), type_=sa.String(length=16))
        batch.create_check_constraint(op.f("ck_valuations_method"), f"method IN ({_OLD})")
