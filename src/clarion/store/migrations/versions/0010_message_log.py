"""message log: indexes for listing notifications and deliveries newest first

Revision ID: 0010
Revises: 0007
Create Date: 2026-11-23 11:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_notifications_tenant_created", "notifications", ["tenant_id", "created_at", "id"]),
    (
        "ix_notifications_tenant_status_created",
        "notifications",
        ["tenant_id", "status", "created_at", "id"],
    ),
    (
        "ix_notifications_tenant_template_created",
        "notifications",
        ["tenant_id", "template", "created_at", "id"],
    ),
    ("ix_deliveries_tenant_created", "deliveries", ["tenant_id", "created_at", "id"]),
    (
        "ix_deliveries_tenant_status_created",
        "deliveries",
        ["tenant_id", "status", "created_at", "id"],
    ),
    (
        "ix_deliveries_tenant_recipient_created",
        "deliveries",
        ["tenant_id", "recipient_id", "created_at", "id"],
    ),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)
    # The new recipient index starts with the same columns.
    op.drop_index("ix_deliveries_tenant_id_recipient_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index(
        "ix_deliveries_tenant_id_recipient_id",
        "deliveries",
        ["tenant_id", "recipient_id"],
        unique=False,
    )
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
