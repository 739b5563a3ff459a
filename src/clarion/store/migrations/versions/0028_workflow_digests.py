"""workflow digests: the open windows of workflow `digest` steps and the triggers collected

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-25 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "workflow_digests",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("closes_at", when, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "workflow", "step", "key", name=op.f("pk_workflow_digests")
        ),
    )
    op.create_index("ix_workflow_digests_run_id", "workflow_digests", ["run_id"])
    op.create_table(
        "workflow_digest_events",
        sa.Column("carrier_id", sa.String(length=40), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint(
            "carrier_id", "step", "seq", name=op.f("pk_workflow_digest_events")
        ),
    )
    op.create_index("ix_workflow_digest_events_run_id", "workflow_digest_events", ["run_id"])


def downgrade() -> None:
    op.drop_table("workflow_digest_events")
    op.drop_table("workflow_digests")
