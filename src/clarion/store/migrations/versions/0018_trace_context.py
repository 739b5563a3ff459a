"""trace context: the W3C traceparent a notification (and a schedule) was made in

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-23 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding them rewrites nothing on either store.
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("trace", sa.String(length=55), nullable=True))
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("trace", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("trace")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("trace")
