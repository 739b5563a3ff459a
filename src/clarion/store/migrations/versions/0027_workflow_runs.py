"""workflow runs: a workflow send's run per recipient; notifications name their workflow

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-25 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("workflow", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("cancellation_key", sa.String(length=200), nullable=True))
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("cancellation_key", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("wake_at", when, nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_runs")),
    )
    op.create_index("ix_workflow_runs_wake_at", "workflow_runs", ["wake_at"])
    op.create_index(
        "ix_workflow_runs_notification", "workflow_runs", ["notification_id", "recipient_id"]
    )
    op.create_index(
        "ix_workflow_runs_cancellation",
        "workflow_runs",
        ["tenant_id", "workflow", "cancellation_key"],
    )


def downgrade() -> None:
    op.drop_table("workflow_runs")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("cancellation_key")
        batch.drop_column("workflow")
