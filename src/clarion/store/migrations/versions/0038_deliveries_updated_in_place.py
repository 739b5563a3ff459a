"""deliveries: the outcome of an attempt written in place (no index holds the status)

A delivery's row was written twice: inserted `queued`, then updated with the attempt's
outcome. The status was in two of its six indexes (`status, updated_at` for the sweeper,
`tenant_id, status, created_at, id` for the message log and the dead letters), so the
update was a new version of the row elsewhere in the table and an entry in each of the
six indexes. With no index on a column the outcome changes, and room left on each page
(fillfactor), PostgreSQL writes the new version on the same page and no index entry at
all (a heap-only tuple).

What those two indexes served is served otherwise:
- the sweeper walks each tenant's deliveries made since its last pass once
  (``ix_deliveries_tenant_created``, from ``sweeps.swept_until``) and marks those still
  waiting (`watched_since`, a partial index of only those): it finds the stale among them;
- dead letters are found through their `dead` event (a new index of ``delivery_events``
  by tenant, status and time), the delivery's own status telling whether it still is;
- a delivery list filtered by status reads the tenant's deliveries newest first.

Every delivery waiting now is marked, and the sweeper starts from now.

Revision ID: 0038
Revises: 0037
Create Date: 2026-11-28 11:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0038"
down_revision: str | None = "0037"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Room left on each page of a delivery partition for the new versions of its rows.
FILLFACTOR = 50


def _partitions() -> list[str]:
    """The partitions of ``deliveries`` (PostgreSQL)."""
    query = sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'deliveries'::regclass"
    )
    return list(op.get_bind().execute(query).scalars())


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    stamp = sa.DateTime(timezone=True)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("watched_since", stamp, nullable=True))
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("swept_until", stamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.execute(
        "UPDATE deliveries SET watched_since = updated_at WHERE status IN ('queued', 'scheduled')"
    )
    op.execute("INSERT INTO sweeps (id, swept_until) VALUES (1, CURRENT_TIMESTAMP)")
    op.create_index(
        "ix_deliveries_watched_since",
        "deliveries",
        ["watched_since"],
        postgresql_where=sa.text("watched_since IS NOT NULL"),
        sqlite_where=sa.text("watched_since IS NOT NULL"),
    )
    op.create_index(
        "ix_delivery_events_tenant_status_created",
        "delivery_events",
        ["tenant_id", "status", "created_at", "delivery_id"],
    )
    op.drop_index("ix_deliveries_status_updated_at", table_name="deliveries")
    op.drop_index("ix_deliveries_tenant_status_created", table_name="deliveries")
    if postgres:
        for name in _partitions():
            op.execute(f"ALTER TABLE {name} SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for name in _partitions():
            op.execute(f"ALTER TABLE {name} RESET (fillfactor)")
    op.create_index(
        "ix_deliveries_tenant_status_created",
        "deliveries",
        ["tenant_id", "status", "created_at", "id"],
    )
    op.create_index("ix_deliveries_status_updated_at", "deliveries", ["status", "updated_at"])
    op.drop_index("ix_delivery_events_tenant_status_created", table_name="delivery_events")
    op.drop_index("ix_deliveries_watched_since", table_name="deliveries")
    op.drop_table("sweeps")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("watched_since")
