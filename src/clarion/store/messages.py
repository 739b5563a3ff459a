"""Captured sandbox messages (the inbox is in ``inbox.py``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store.db import shown, utcnow, write_tx
from clarion.store.sql import insert_ignoring_conflicts
from clarion.store.tables import sandbox_messages

# What the API shows of a captured message.
_COLUMNS = ("id", "delivery_id", "channel", "recipient_id", "to", "content", "created_at")


async def insert_sandbox_messages(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    now = utcnow()
    async with write_tx(engine) as conn:
        await conn.execute(
            insert_ignoring_conflicts(conn, sandbox_messages),
            [{**r, "created_at": now} for r in rows],
        )


async def list_sandbox_messages(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    channel: str | None,
    recipient_id: str | None,
    before: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; ``before`` is the id of the last message of the previous page."""
    t = sandbox_messages
    query = select(t).where(t.c.tenant_id == tenant_id)
    if channel:
        query = query.where(t.c.channel == channel)
    if recipient_id:
        query = query.where(t.c.recipient_id == recipient_id)
    if before:
        query = query.where(t.c.id < before)
    query = query.order_by(t.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [shown(r, _COLUMNS) for r in rows]
