"""topics: memberships, topic sends planned in chunks, deliveries paged per notification

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "topic_subscribers",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "topic", "recipient_id", name="pk_topic_subscribers"),
    )
    op.create_index(
        "ix_topic_subscribers_recipient",
        "topic_subscribers",
        ["tenant_id", "recipient_id"],
        unique=False,
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("topic", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("planned_through", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_notification_id")
        batch_op.create_index(
            "ix_deliveries_notification_id_id", ["notification_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_notification_id_id")
        batch_op.create_index("ix_deliveries_notification_id", ["notification_id"], unique=False)
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("planned_at")
        batch_op.drop_column("planned_through")
        batch_op.drop_column("topic")
    op.drop_index("ix_topic_subscribers_recipient", table_name="topic_subscribers")
    op.drop_table("topic_subscribers")
