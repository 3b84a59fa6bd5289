"""The single migration matches the ORM models exactly, on the test database's dialect."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from service.db.migrate import alembic_config
from service.db.models import Base


def test_migrated_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert context.get_current_revision() == head


def test_one_initial_revision() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions())
    assert len(revisions) == 1 and revisions[0].down_revision is None


def test_expected_tables(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "datasets", "records", "models", "jobs", "valuations", "warmup_runs", "checkpoints",
        "feature_sets", "scores", "selections",
    } <= tables  # fmt: skip
