"""Alembic environment: Clarion hands in an open connection (see ``clarion.store.db``)."""

from __future__ import annotations

from alembic import context

from clarion.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `clarion migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
