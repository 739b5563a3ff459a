"""workflow run indexes: partial, over the runs they serve

The wake-time index holds only runs that will wake (an ended run has none), and the
cancellation index only runs sent with a cancellation key: a run's row is rewritten at
every step, and each index it is in is written with it.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-25 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WAKING = "wake_at IS NOT NULL"
_KEYED = "cancellation_key IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_workflow_runs_wake_at", table_name="workflow_runs")
    op.create_index(
        "ix_workflow_runs_wake_at",
        "workflow_runs",
        ["wake_at"],
        sqlite_where=sa.text(_WAKING),
        postgresql_where=sa.text(_WAKING),
    )
    op.drop_index("ix_workflow_runs_cancellation", table_name="workflow_runs")
    op.create_index(
        "ix_workflow_runs_cancellation",
        "workflow_runs",
        ["tenant_id", "workflow", "cancellation_key"],
        sqlite_where=sa.text(_KEYED),
        postgresql_where=sa.text(_KEYED),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_cancellation", table_name="workflow_runs")
    op.create_index(
        "ix_workflow_runs_cancellation",
        "workflow_runs",
        ["tenant_id", "workflow", "cancellation_key"],
    )
    op.drop_index("ix_workflow_runs_wake_at", table_name="workflow_runs")
    op.create_index("ix_workflow_runs_wake_at", "workflow_runs", ["wake_at"])
