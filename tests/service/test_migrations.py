"""The migrations match the ORM models exactly, on the test database's dialect."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect

from service.db.migrate import alembic_config
from service.db.models import Base


def test_migrated_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert context.get_current_revision() == head


def test_linear_history_from_one_initial_revision() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions())  # head first
    assert len(script.get_heads()) == 1
    assert revisions[-1].down_revision is None
    for newer, older in zip(revisions, revisions[1:], strict=False):
        assert newer.down_revision == older.revision


def test_each_revision_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    config = alembic_config(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    command.upgrade(config, "head")
    command.downgrade(config, "0001")
    assert (
        "reward_specs"
        not in inspect(create_engine(f"sqlite:///{tmp_path / 'm.db'}")).get_table_names()
    )
    command.upgrade(config, "head")
    assert (
        "reward_specs" in inspect(create_engine(f"sqlite:///{tmp_path / 'm.db'}")).get_table_names()
    )


def test_expected_tables(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "datasets", "records", "models", "jobs", "valuations", "warmup_runs", "checkpoints",
        "feature_sets", "scores", "selections", "reward_specs", "studies", "score_sets",
        "curations",
    } <= tables  # fmt: skip


def test_rows_from_before_tenancy_belong_to_the_default_tenant(tmp_path: Path) -> None:
    """Migration 0008 gives existing rows tenant ``default``; a key of it sees them, and names
    that were globally unique become unique per tenant."""
    from sqlalchemy import text

    from service.auth import keys
    from service.db.session import make_engine
    from service.tenancy import DEFAULT_TENANT_ID

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(database_url=url)
    command.upgrade(config, "0007")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, name, source, created_at) "
                "VALUES ('m1', 'tiny', 'builtin:tiny-llama', CURRENT_TIMESTAMP)"
            )
        )
    command.upgrade(config, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT tenant_id FROM models")).scalar() == DEFAULT_TENANT_ID
        conn.execute(
            text(
                "INSERT INTO tenants (id, name, created_at) VALUES ('t2', 'two', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(  # the same name in another tenant is fine now
            text(
                "INSERT INTO models (id, tenant_id, name, source, created_at) "
                "VALUES ('m2', 't2', 'tiny', 'builtin:tiny-llama', CURRENT_TIMESTAMP)"
            )
        )
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        _, key = keys.create_key(session, DEFAULT_TENANT_ID, name="old", role="admin")
        principal = keys.authenticate(session, key)
        assert principal is not None and principal.tenant_id == DEFAULT_TENANT_ID
    engine.dispose()


def test_tracin_valuations_from_before_0012_become_tracin_adam(tmp_path: Path) -> None:
    """Before 0012 ``tracin`` scored Adam pool features; 0012 renames those valuations
    ``tracin_adam`` (what they computed), and downgrading renames them back."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(database_url=url)
    command.upgrade(config, "0011")
    engine = create_engine(url)
    now, tenant = "CURRENT_TIMESTAMP", "'default'"
    rows = [
        f"INSERT INTO models (id, name, source, created_at, tenant_id) "
        f"VALUES ('m', 'tiny', 'builtin:tiny-llama', {now}, {tenant})",
        f"INSERT INTO datasets (id, name, n_records, n_duplicates, duplicates, content_hash, "
        f"created_at, tenant_id) VALUES ('d', 'd', 1, 0, '[]', 'h', {now}, {tenant})",
    ]
    for vid, method in (("v1", "tracin"), ("v2", "less")):
        rows += [
            f"INSERT INTO jobs (id, kind, status, progress_done, progress_total, notes, "
            f"timings, cancel_requested, created_at, tenant_id) VALUES ('{vid}', 'valuation', "
            f"'succeeded', 0, 0, '[]', '{{}}', 0, {now}, {tenant})",
            f"INSERT INTO valuations (id, job_id, model_id, pool_dataset_id, probe_dataset_id, "
            f"method, settings, skipped, created_at, tenant_id) VALUES ('{vid}', '{vid}', 'm', "
            f"'d', 'd', '{method}', '{{}}', '[]', {now}, {tenant})",
        ]
    with engine.begin() as conn:
        for row in rows:
            conn.execute(text(row))

    def methods() -> dict[str, str]:
        with engine.begin() as conn:
            return dict(conn.execute(text("SELECT id, method FROM valuations")).all())

    command.upgrade(config, "head")
    assert methods() == {"v1": "tracin_adam", "v2": "less"}
    command.downgrade(config, "0011")
    assert methods() == {"v1": "tracin", "v2": "less"}


def test_self_influence_valuations_have_no_probes_and_block_the_downgrade(tmp_path: Path) -> None:
    """0013 lets a self-influence valuation have no probe set (NULL) and selections take the
    lowest scores (order asc; earlier ones read desc); 0012 can express neither, so the
    downgrade refuses while they exist and restores NOT NULL once they are gone."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    url = f"sqlite:///{tmp_path / 'si.db'}"
    config = alembic_config(database_url=url)
    command.upgrade(config, "0012")
    engine = create_engine(url)
    now, tenant = "CURRENT_TIMESTAMP", "'default'"

    def valuation(vid: str, method: str, probes: str) -> list[str]:
        return [
            f"INSERT INTO jobs (id, kind, status, progress_done, progress_total, notes, "
            f"timings, cancel_requested, created_at, tenant_id) VALUES ('{vid}', 'valuation', "
            f"'succeeded', 0, 0, '[]', '{{}}', 0, {now}, {tenant})",
            f"INSERT INTO valuations (id, job_id, model_id, pool_dataset_id, probe_dataset_id, "
            f"method, settings, skipped, created_at, tenant_id) VALUES ('{vid}', '{vid}', 'm', "
            f"'d', {probes}, '{method}', '{{}}', '[]', {now}, {tenant})",
        ]

    def run(*rows: str) -> None:
        with engine.begin() as conn:
            for row in rows:
                conn.execute(text(row))

    run(
        f"INSERT INTO models (id, name, source, created_at, tenant_id) "
        f"VALUES ('m', 'tiny', 'builtin:tiny-llama', {now}, {tenant})",
        f"INSERT INTO datasets (id, name, n_records, n_duplicates, duplicates, content_hash, "
        f"created_at, tenant_id) VALUES ('d', 'd', 1, 0, '[]', 'h', {now}, {tenant})",
        *valuation("v1", "less", "'d'"),
        "INSERT INTO selections (id, valuation_id, rule, value, n_selected, record_ids, "
        f"created_at, tenant_id) VALUES ('s1', 'v1', 'top_k', 1, 0, '[]', {now}, {tenant})",
        "INSERT INTO scores (valuation_id, record_id, rank, score, per_subtask, tenant_id) "
        f"VALUES ('v1', 'r', 0, 1.0, '{{}}', {tenant})",
    )

    def kept() -> tuple[int, int]:  # SQLite rebuilds valuations: its scores and selections stay
        with engine.begin() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("scores", "selections")
            )

    with pytest.raises(IntegrityError):
        run(*valuation("v0", "less", "NULL"))
    command.upgrade(config, "head")
    run(*valuation("v2", "self_influence_adam", "NULL"))
    with engine.begin() as conn:
        assert conn.execute(text('SELECT "order" FROM selections')).scalar() == "desc"
    assert kept() == (1, 1)
    with pytest.raises(RuntimeError, match="1 self-influence valuations"):
        command.downgrade(config, "0012")
    run("DELETE FROM valuations WHERE id = 'v2'", "DELETE FROM jobs WHERE id = 'v2'")
    command.downgrade(config, "0012")
    assert kept() == (1, 1)
    with pytest.raises(IntegrityError):
        run(*valuation("v3", "less", "NULL"))
    with engine.begin() as conn:
        assert conn.execute(text("SELECT method FROM valuations")).scalars().all() == ["less"]


def test_sqlite_table_rebuilds_keep_the_rows_that_refer_to_the_table(tmp_path: Path) -> None:
    """0011-0013 rebuild ``valuations`` on SQLite (batch ALTER: copy, drop, rename); the
    drop must not cascade to the valuation's scores and selections."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(database_url=url)
    command.upgrade(config, "0010")
    engine = create_engine(url)
    now, tenant = "CURRENT_TIMESTAMP", "'default'"
    rows = [
        f"INSERT INTO models (id, name, source, created_at, tenant_id) "
        f"VALUES ('m', 'tiny', 'builtin:tiny-llama', {now}, {tenant})",
        f"INSERT INTO datasets (id, name, n_records, n_duplicates, duplicates, content_hash, "
        f"created_at, tenant_id) VALUES ('d', 'd', 1, 0, '[]', 'h', {now}, {tenant})",
        f"INSERT INTO jobs (id, kind, status, progress_done, progress_total, notes, timings, "
        f"cancel_requested, created_at, tenant_id) VALUES ('v', 'valuation', 'succeeded', 0, "
        f"0, '[]', '{{}}', 0, {now}, {tenant})",
        f"INSERT INTO valuations (id, job_id, model_id, pool_dataset_id, probe_dataset_id, "
        f"method, settings, skipped, created_at, tenant_id) VALUES ('v', 'v', 'm', 'd', 'd', "
        f"'less', '{{}}', '[]', {now}, {tenant})",
        f"INSERT INTO scores (valuation_id, record_id, rank, score, per_subtask, tenant_id) "
        f"VALUES ('v', 'r0', 0, 0.5, '{{}}', {tenant})",
        f"INSERT INTO selections (id, valuation_id, rule, value, n_selected, record_ids, "
        f"created_at, tenant_id) VALUES ('s', 'v', 'top_k', 1, 1, '[\"r0\"]', {now}, {tenant})",
    ]
    with engine.begin() as conn:
        for row in rows:
            conn.execute(text(row))
    command.upgrade(config, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT record_id, score FROM scores")).all() == [("r0", 0.5)]
        assert conn.execute(text("SELECT id, record_ids FROM selections")).all() == [
            ("s", '["r0"]')
        ]
