"""whatsapp channel: a recipient's WhatsApp number, when it is not its phone number

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-25 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0035"
down_revision: str | None = "0034"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("whatsapp", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_column("whatsapp")
