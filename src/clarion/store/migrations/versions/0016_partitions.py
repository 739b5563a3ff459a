"""deliveries and delivery_events partitioned by day on PostgreSQL (retention)

A delivery's id now starts with its notification's time (domain/ids.py), so both tables
are partitioned by range of the delivery id: one partition a day, and a default one for
ids that carry no time, which is where every row written before this migration goes.
Their rows leave by the batched prune once older than the retention horizon
(store/retention.py); the days to come are dropped whole.

The tables are rebuilt and their rows copied, so this takes a while on a large database;
stop the API and let the workers drain first (docs/operations.md, "Retention"). SQLite
keeps its tables as they are: it prunes in batches.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23 17:10:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from alembic import op

from clarion.store import retention

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DELIVERY_INDEXES = {
    "ix_deliveries_notification_id_id": "notification_id, id",
    "ix_deliveries_status_updated_at": "status, updated_at",
    "ix_deliveries_tenant_created": "tenant_id, created_at, id",
    "ix_deliveries_tenant_recipient_created": "tenant_id, recipient_id, created_at, id",
    "ix_deliveries_tenant_status_created": "tenant_id, status, created_at, id",
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    run = op.execute
    # deliveries: the old table aside (its names freed), the partitioned one in its place.
    run("ALTER TABLE deliveries RENAME TO deliveries_old")
    run("ALTER TABLE deliveries_old RENAME CONSTRAINT pk_deliveries TO pk_deliveries_old")
    for name in _DELIVERY_INDEXES:
        run(f"DROP INDEX {name}")
    run("CREATE TABLE deliveries (LIKE deliveries_old INCLUDING DEFAULTS) PARTITION BY RANGE (id)")
    run("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id)")
    for name, columns in _DELIVERY_INDEXES.items():
        run(f"CREATE INDEX {name} ON deliveries ({columns})")
    run("CREATE TABLE deliveries_default PARTITION OF deliveries DEFAULT")

    # delivery_events: partitioned with its delivery; the primary key leads with the
    # delivery id, which also serves a delivery's timeline (no separate index).
    run("ALTER TABLE delivery_events RENAME TO delivery_events_old")
    run(
        "ALTER TABLE delivery_events_old "
        "RENAME CONSTRAINT pk_delivery_events TO pk_delivery_events_old"
    )
    run("DROP INDEX ix_delivery_events_delivery_id")
    run(
        "CREATE TABLE delivery_events (LIKE delivery_events_old INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (delivery_id)"
    )
    run(
        "ALTER TABLE delivery_events ADD CONSTRAINT pk_delivery_events "
        "PRIMARY KEY (delivery_id, id)"
    )
    run("CREATE TABLE delivery_events_default PARTITION OF delivery_events DEFAULT")
    run("ALTER SEQUENCE delivery_events_id_seq OWNED BY delivery_events.id")

    today = datetime.now(UTC).date()
    retention.ensure_partitions(bind, today, today + timedelta(days=retention.AHEAD_DAYS))
    run("INSERT INTO deliveries SELECT * FROM deliveries_old")
    run("INSERT INTO delivery_events SELECT * FROM delivery_events_old")
    run("DROP TABLE deliveries_old")
    run("DROP TABLE delivery_events_old")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    run = op.execute
    for table in ("deliveries", "delivery_events"):
        run(f"ALTER TABLE {table} RENAME TO {table}_parts")
        run(f"CREATE TABLE {table} (LIKE {table}_parts INCLUDING DEFAULTS)")
        run(f"INSERT INTO {table} SELECT * FROM {table}_parts")
    run("ALTER TABLE deliveries_parts RENAME CONSTRAINT pk_deliveries TO pk_deliveries_parts")
    run(
        "ALTER TABLE delivery_events_parts "
        "RENAME CONSTRAINT pk_delivery_events TO pk_delivery_events_parts"
    )
    for name in _DELIVERY_INDEXES:
        run(f"DROP INDEX {name}")
    run("ALTER SEQUENCE delivery_events_id_seq OWNED BY delivery_events.id")
    run("DROP TABLE deliveries_parts")
    run("DROP TABLE delivery_events_parts")
    run("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id)")
    run("ALTER TABLE delivery_events ADD CONSTRAINT pk_delivery_events PRIMARY KEY (id)")
    for name, columns in _DELIVERY_INDEXES.items():
        run(f"CREATE INDEX {name} ON deliveries ({columns})")
    run("CREATE INDEX ix_delivery_events_delivery_id ON delivery_events (delivery_id)")
