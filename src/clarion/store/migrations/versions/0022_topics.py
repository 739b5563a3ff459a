"""topics: a topic exists from its creation (or first subscriber) until it is deleted,
whether or not it has subscribers at the moment

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-25 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "topics",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", name="pk_topics"),
    )
    # Every topic that has subscribers today exists, created when its first one joined.
    op.execute(
        "INSERT INTO topics (tenant_id, name, created_at) "
        "SELECT tenant_id, topic, MIN(created_at) FROM topic_subscribers "
        "GROUP BY tenant_id, topic"
    )


def downgrade() -> None:
    op.drop_table("topics")
