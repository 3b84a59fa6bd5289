"""Tenancy: tenants, API keys and tenant secrets; ``tenant_id`` on every resource table.

Rows that existed before belong to the tenant ``default`` (whose blobs keep their keys). Names
of models and reward specs, and the content keys of warmup runs and feature sets, become unique
per tenant: a cache hit never crosses tenants. Reward specs gain ``secret_headers`` (write-only,
encrypted with ``SIFT_SECRET_KEY``); headers of specs created before stay where they were, are
still sent by the worker, and are never returned.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESOURCE_TABLES = (
    "datasets",
    "records",
    "models",
    "reward_specs",
    "jobs",
    "samples",
    "valuations",
    "warmup_runs",
    "checkpoints",
    "feature_sets",
    "scores",
    "selections",
    "studies",
    "score_sets",
    "curations",
)
PER_TENANT_UNIQUE = {
    "models": "name",
    "reward_specs": "name",
    "warmup_runs": "content_key",
    "feature_sets": "content_key",
}


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'member', 'read_only')", name=op.f("ck_api_keys_role")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])
    op.create_table(
        "tenant_secrets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=True),
        sa.Column("env_var", sa.String(length=100), nullable=True),
        sa.Column("hosts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('stored', 'worker_env')", name=op.f("ck_tenant_secrets_source")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_secrets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_secrets")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_tenant_secrets_tenant_id_name")),
    )
    op.create_index(op.f("ix_tenant_secrets_tenant_id"), "tenant_secrets", ["tenant_id"])

    tenants = sa.table(
        "tenants",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        tenants.insert().values(
            id="default", name="default", created_at=sa.func.current_timestamp()
        )
    )

    with op.batch_alter_table("reward_specs") as batch:
        batch.add_column(sa.Column("secret_headers", sa.Text(), nullable=True))

    for table in RESOURCE_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column(
                    "tenant_id", sa.String(length=32), nullable=False, server_default="default"
                )
            )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("tenant_id", server_default=None)
            batch.create_foreign_key(
                op.f(f"fk_{table}_tenant_id_tenants"),
                "tenants",
                ["tenant_id"],
                ["id"],
                ondelete="CASCADE",
            )
            batch.create_index(op.f(f"ix_{table}_tenant_id"), ["tenant_id"])
            if table in PER_TENANT_UNIQUE:
                column = PER_TENANT_UNIQUE[table]
                batch.drop_constraint(op.f(f"uq_{table}_{column}"), type_="unique")
                batch.create_unique_constraint(
                    op.f(f"uq_{table}_tenant_id_{column}"), ["tenant_id", column]
                )


def downgrade() -> None:
    for table in reversed(RESOURCE_TABLES):
        with op.batch_alter_table(table) as batch:
            if table in PER_TENANT_UNIQUE:
                column = PER_TENANT_UNIQUE[table]
                batch.drop_constraint(op.f(f"uq_{table}_tenant_id_{column}"), type_="unique")
                batch.create_unique_constraint(op.f(f"uq_{table}_{column}"), [column])
            batch.drop_index(op.f(f"ix_{table}_tenant_id"))
            batch.drop_constraint(op.f(f"fk_{table}_tenant_id_tenants"), type_="foreignkey")
            batch.drop_column("tenant_id")
    with op.batch_alter_table("reward_specs") as batch:
        batch.drop_column("secret_headers")
    op.drop_index(op.f("ix_tenant_secrets_tenant_id"), table_name="tenant_secrets")
    op.drop_table("tenant_secrets")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
