"""tracking: a category's open and click tracking (off unless set)

Revision ID: 0034
Revises: 0033
Create Date: 2026-11-25 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0034"
down_revision: str | None = "0033"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # {"opens": bool, "clicks": bool}; null (every category before this) tracks nothing.
    op.add_column("categories", sa.Column("tracking", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("categories") as batch:
        batch.drop_column("tracking")
