"""digests: windows and their held items, digest notifications, caps per day, snooze policy

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "closed_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "digest_windows",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("dkey", sa.String(length=200), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notification_id", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_digest_windows"),
    )
    op.create_index(
        "ix_digest_windows_open",
        "digest_windows",
        ["tenant_id", "recipient_id", "channel", "category", "dkey"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index(
        "ix_digest_windows_closes_at",
        "digest_windows",
        ["closes_at"],
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index("ix_digest_windows_closed_at", "digest_windows", ["closed_at"])
    op.create_index("ix_digest_windows_recipient", "digest_windows", ["tenant_id", "recipient_id"])
    op.create_table(
        "digest_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("window_id", sa.String(length=40), nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_digest_items"),
        sa.UniqueConstraint("delivery_id", name="uq_digest_items_delivery_id"),
    )
    op.create_index("ix_digest_items_window_id_id", "digest_items", ["window_id", "id"])
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest_of", sa.String(length=40), nullable=True))
    with op.batch_alter_table("categories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_per_day", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("overflow", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("during_snooze", sa.String(length=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("categories", schema=None) as batch_op:
        batch_op.drop_column("during_snooze")
        batch_op.drop_column("overflow")
        batch_op.drop_column("max_per_day")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("digest_of")
    op.drop_index("ix_digest_items_window_id_id", table_name="digest_items")
    op.drop_table("digest_items")
    op.drop_index("ix_digest_windows_recipient", table_name="digest_windows")
    op.drop_index("ix_digest_windows_closed_at", table_name="digest_windows")
    op.drop_index("ix_digest_windows_closes_at", table_name="digest_windows")
    op.drop_index("ix_digest_windows_open", table_name="digest_windows")
    op.drop_table("digest_windows")
