"""Rows a tenant names itself (providers, webhooks): a table keyed by (tenant_id, name)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import RowMapping, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store import audit
from clarion.store.db import write_tx


async def get_one(engine: AsyncEngine, table: Table, tenant_id: str, name: str) -> Any:
    """The row as a mapping, or None."""
    query = select(table).where(table.c.tenant_id == tenant_id, table.c.name == name)
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()


async def list_page(
    engine: AsyncEngine, table: Table, tenant_id: str, *, after: str | None, limit: int
) -> Sequence[RowMapping]:
    """A tenant's rows by name, those after ``after``."""
    query = select(table).where(table.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(table.c.name > after)
    query = query.order_by(table.c.name).limit(limit)
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().all()


async def delete_one(
    engine: AsyncEngine,
    table: Table,
    tenant_id: str,
    name: str,
    change: Callable[[RowMapping], audit.Change],
) -> bool:
    """Delete the row; ``change`` makes its audit record from the row deleted."""
    mine = (table.c.tenant_id == tenant_id) & (table.c.name == name)
    async with write_tx(engine) as conn:
        row = (await conn.execute(select(table).where(mine).with_for_update())).mappings().first()
        if row is None:
            return False
        await conn.execute(delete(table).where(mine))
        await audit.record(conn, change(row))
    return True
