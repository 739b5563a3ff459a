"""attempt events: provider, latency, error class and reason on delivery events

A delivery's row keeps the latency of the attempt that set its state.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-25 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Nullable columns without defaults: adding them rewrites no row (PostgreSQL adds them to
# every partition of the partitioned tables).
_EVENT_COLUMNS = (
    ("attempt", sa.Integer()),
    ("provider", sa.String(length=100)),
    ("latency_ms", sa.Integer()),
    ("error_class", sa.String(length=40)),
    ("reason", sa.String(length=40)),
)


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("latency_ms", sa.Integer(), nullable=True))
    for name, kind in _EVENT_COLUMNS:
        op.add_column("delivery_events", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_events") as batch:
        for name, _ in reversed(_EVENT_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("latency_ms")
