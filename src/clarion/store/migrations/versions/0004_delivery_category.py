"""deliveries carry their template's category

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("category", sa.String(length=100), nullable=True))
        batch.add_column(
            sa.Column("critical", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("critical")
        batch.drop_column("category")
