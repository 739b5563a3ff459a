"""layouts: each tenant's email layouts, every change a new version; the layout a template
version names

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-25 23:59:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _keyed(*key: str) -> list[sa.Column[Any]]:
    """A layout's key columns (tenant, name, and ``key``'s extra ones), all required."""
    tenant = sa.Column("tenant_id", sa.String(length=40), nullable=False)
    extra = [sa.Column(k, sa.Integer(), nullable=False) for k in key]
    return [tenant, sa.Column("name", sa.String(length=200), nullable=False), *extra]


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "layouts",
        *_keyed(),
        *(sa.Column(n, sa.Integer(), nullable=False) for n in ("active_version", "latest_version")),
        sa.Column("updated_at", when, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_layouts")),
    )
    op.create_table(
        "layout_versions",
        *_keyed("version"),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("locales", sa.JSON(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", "version", name=op.f("pk_layout_versions")),
    )
    op.add_column("template_versions", sa.Column("layout", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("template_versions") as batch:
        batch.drop_column("layout")
    for table in ("layout_versions", "layouts"):
        op.drop_table(table)
