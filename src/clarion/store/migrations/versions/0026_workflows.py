"""workflows: each tenant's workflow definitions, every change a new version

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-25 10:30:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _keyed(*key: str) -> list[sa.Column[Any]]:
    """A workflow's key columns (tenant, key, and ``key``'s extra ones), all required."""
    tenant = sa.Column("tenant_id", sa.String(length=40), nullable=False)
    extra = [sa.Column(k, sa.Integer(), nullable=False) for k in key]
    return [tenant, sa.Column("key", sa.String(length=200), nullable=False), *extra]


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "workflows",
        *_keyed(),
        *(sa.Column(n, sa.Integer(), nullable=False) for n in ("active_version", "latest_version")),
        sa.Column("updated_at", when, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_workflows")),
    )
    op.create_table(
        "workflow_versions",
        *_keyed("version"),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", "version", name=op.f("pk_workflow_versions")),
    )


def downgrade() -> None:
    for table in ("workflow_versions", "workflows"):
        op.drop_table(table)
