"""topics: each topic's number of subscribers kept in its row

A subscription call answered the topic's size by counting its memberships, so loading a
large topic 10,000 at a time counted it again at every call. The size is now a column,
moved with each change to the memberships (store/topics.py), and counted here once.

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-26 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0037"
down_revision: str | None = "0036"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("topics", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("subscribers", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE topics SET subscribers = (SELECT count(*) FROM topic_subscribers AS s "
        "WHERE s.tenant_id = topics.tenant_id AND s.topic = topics.name)"
    )


def downgrade() -> None:
    with op.batch_alter_table("topics", schema=None) as batch_op:
        batch_op.drop_column("subscribers")
