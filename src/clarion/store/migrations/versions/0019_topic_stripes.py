"""topic stripes: a topic send's subscribers planned side by side, one cursor per stripe

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-23 19:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "('accepted', 'scheduled', 'processing')"


def upgrade() -> None:
    op.create_table(
        "topic_stripes",
        sa.Column("notification_id", sa.String(length=40), nullable=False),
        sa.Column("stripe", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("planned_through", sa.String(length=200), nullable=True),
        sa.Column("last_id", sa.String(length=200), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("notification_id", "stripe"),
    )
    # A topic send already being planned on the notification's own cursor goes on as one
    # stripe from where that cursor stands.
    op.execute(
        "INSERT INTO topic_stripes (notification_id, stripe, planned_through, last_id) "
        "SELECT id, 0, planned_through, NULL FROM notifications "
        f"WHERE topic IS NOT NULL AND planned_at IS NULL AND planned_through IS NOT NULL "
        f"AND status IN {_LIVE}"
    )


def downgrade() -> None:
    # A send being planned in stripes goes back to one cursor: the lowest stripe's, so no
    # subscriber is skipped (the chunks after it are planned again, and inserted once).
    op.execute(
        "UPDATE notifications SET planned_through = (SELECT s.planned_through "
        "FROM topic_stripes AS s WHERE s.notification_id = notifications.id "
        "AND s.done_at IS NULL ORDER BY s.stripe LIMIT 1) "
        "WHERE id IN (SELECT notification_id FROM topic_stripes WHERE done_at IS NULL) "
        f"AND planned_at IS NULL AND status IN {_LIVE}"
    )
    op.drop_table("topic_stripes")
