"""delivery claims: an attempt's claim is a narrow row of its own, not the delivery's status

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_claims",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_claims")),
    )
    # A delivery being sent keeps its claim as a row; it waits again with the attempt it is
    # making not counted until its outcome is stored (that outcome counts it).
    op.execute(
        "INSERT INTO delivery_claims (id, attempt, leased_until, cancelled) "
        "SELECT id, attempts, coalesce(leased_until, updated_at), false FROM deliveries "
        "WHERE status = 'sending'"
    )
    op.execute(
        "UPDATE deliveries SET status = 'queued', attempts = attempts - 1 WHERE status = 'sending'"
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("leased_until")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
    op.drop_table("delivery_claims")
