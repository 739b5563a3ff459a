"""workflow runs by recipient: an index for a recipient's export and erasure

Without it both read every run of every tenant.

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-25 21:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_workflow_runs_recipient", "workflow_runs", ["tenant_id", "recipient_id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_recipient", table_name="workflow_runs")
