"""inbox: per-recipient arrival sequence (commit-ordered resume) and counter versions

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    zero = sa.text("0")
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=False, server_default=zero))
    with op.batch_alter_table("inbox_counters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=False, server_default=zero))
        batch_op.add_column(
            sa.Column("version", sa.BigInteger(), nullable=False, server_default=zero)
        )
    # Messages stored before: numbered in the order the feed shows them.
    op.execute(
        "UPDATE inbox_messages SET seq = numbered.n FROM ("
        " SELECT id, row_number() OVER ("
        "  PARTITION BY tenant_id, recipient_id ORDER BY created_at, id) AS n"
        " FROM inbox_messages) AS numbered "
        "WHERE inbox_messages.id = numbered.id"
    )
    op.execute(
        "UPDATE inbox_counters SET seq = coalesce((SELECT max(m.seq) FROM inbox_messages m"
        " WHERE m.tenant_id = inbox_counters.tenant_id"
        " AND m.recipient_id = inbox_counters.recipient_id), 0)"
    )
    op.create_index(
        "ix_inbox_messages_seq",
        "inbox_messages",
        ["tenant_id", "recipient_id", "seq"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_messages_seq", table_name="inbox_messages")
    with op.batch_alter_table("inbox_counters", schema=None) as batch_op:
        batch_op.drop_column("version")
        batch_op.drop_column("seq")
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.drop_column("seq")
