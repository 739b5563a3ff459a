"""in-app inbox: message states, feed indexes, recipient-token secrets and revocations

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIBLE = "snoozed_until IS NULL"
_FEED = "status IN ('unread', 'read') AND snoozed_until IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbox_secret", sa.String(length=100), nullable=True))
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("category", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("seen_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("snoozed_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notification_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("fallback_due", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("fallback_channel", sa.String(length=16), nullable=True))
        batch_op.drop_index("ix_inbox_messages_recipient")
    # Partial indexes: the predicates are those of the queries in store/inbox.py.
    for name, columns, where in (
        ("ix_inbox_messages_feed", ["created_at", "id"], _FEED),
        ("ix_inbox_messages_status", ["status", "created_at", "id"], _VISIBLE),
    ):
        op.create_index(
            name,
            "inbox_messages",
            ["tenant_id", "recipient_id", *columns],
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )
    op.create_index(
        "ix_inbox_messages_all", "inbox_messages", ["tenant_id", "recipient_id", "created_at", "id"]
    )
    op.create_index("ix_inbox_messages_snoozed_until", "inbox_messages", ["snoozed_until"])
    op.create_index("ix_inbox_messages_fallback_due", "inbox_messages", ["fallback_due"])
    op.create_table(
        "inbox_counters",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("unread", sa.Integer(), nullable=False),
        sa.Column("unseen", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "recipient_id", name=op.f("pk_inbox_counters")),
    )
    # Messages stored before: all unread and unseen.
    op.execute(
        "INSERT INTO inbox_counters (tenant_id, recipient_id, unread, unseen, total) "
        "SELECT tenant_id, recipient_id, count(*), count(*), count(*) FROM inbox_messages "
        "GROUP BY tenant_id, recipient_id"
    )
    op.create_table(
        "inbox_revocations",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "recipient_id", name=op.f("pk_inbox_revocations")),
    )
    with op.batch_alter_table("inbox_revocations", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_revocations_revoked_at", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("inbox_revocations")
    op.drop_table("inbox_counters")
    for name in (
        "ix_inbox_messages_fallback_due",
        "ix_inbox_messages_snoozed_until",
        "ix_inbox_messages_all",
        "ix_inbox_messages_status",
        "ix_inbox_messages_feed",
    ):
        op.drop_index(name, table_name="inbox_messages")
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbox_messages_recipient", ["tenant_id", "recipient_id", "id"], unique=False
        )
        batch_op.drop_column("fallback_channel")
        batch_op.drop_column("fallback_due")
        batch_op.drop_column("notification_id")
        batch_op.drop_column("snoozed_until")
        batch_op.drop_column("archived_at")
        batch_op.drop_column("seen_at")
        batch_op.drop_column("category")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("inbox_secret")
