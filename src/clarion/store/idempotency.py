"""Idempotency keys for requests that create things: claimed atomically, then completed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store.db import utcnow, write_tx
from clarion.store.sql import insert_ignoring_conflicts
from clarion.store.tables import idempotency_keys as keys

IN_PROGRESS = 0


@dataclass(frozen=True, slots=True)
class Earlier:
    """What the request that claimed the key answered: its status (``IN_PROGRESS`` while it
    runs) and body."""

    request_hash: str
    status: int
    response: Any


async def claim(
    engine: AsyncEngine, tenant_id: str, key: str, scope: str, request_hash: str
) -> Earlier | None:
    """Claim the key for this request; None if claimed, else what an earlier one left."""
    async with write_tx(engine) as conn:
        inserted = await conn.execute(
            insert_ignoring_conflicts(conn, keys).values(
                tenant_id=tenant_id,
                key=key,
                scope=scope,
                request_hash=request_hash,
                status_code=IN_PROGRESS,
                response={},
                created_at=utcnow(),
            )
        )
        if inserted.rowcount == 1:
            return None
        row = (
            await conn.execute(
                select(keys.c.request_hash, keys.c.status_code, keys.c.response).where(
                    keys.c.tenant_id == tenant_id, keys.c.key == key, keys.c.scope == scope
                )
            )
        ).first()
    if row is None:  # released in between: treat as ours to retry by the client
        return Earlier(request_hash, IN_PROGRESS, {})
    return Earlier(row.request_hash, row.status_code, row.response)


async def complete(
    engine: AsyncEngine, tenant_id: str, key: str, scope: str, status: int, response: Any
) -> None:
    async with write_tx(engine) as conn:
        await conn.execute(
            update(keys)
            .where(keys.c.tenant_id == tenant_id, keys.c.key == key, keys.c.scope == scope)
            .values(status_code=status, response=response)
        )


async def release(engine: AsyncEngine, tenant_id: str, key: str, scope: str) -> None:
    async with write_tx(engine) as conn:
        await conn.execute(
            delete(keys).where(
                keys.c.tenant_id == tenant_id, keys.c.key == key, keys.c.scope == scope
            )
        )
