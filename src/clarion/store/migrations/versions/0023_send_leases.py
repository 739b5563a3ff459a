"""send leases: a delivery being sent is held by the worker that claimed its attempt

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-25 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing on either store.
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # A delivery being sent is queued again: its attempt is counted, the next one is due.
    op.execute("UPDATE deliveries SET status = 'queued' WHERE status = 'sending'")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("leased_until")
