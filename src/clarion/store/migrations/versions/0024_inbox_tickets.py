"""inbox tickets: short-lived, single-use tickets that open one live inbox connection

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-25 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_tickets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("token_issued_ms", sa.BigInteger(), nullable=False),
        sa.Column("token_expires", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_tickets")),
    )
    with op.batch_alter_table("inbox_tickets", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_tickets_expires_at", ["expires_at"])


def downgrade() -> None:
    op.drop_table("inbox_tickets")
