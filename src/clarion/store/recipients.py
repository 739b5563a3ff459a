"""Recipients: the tenant's users and their addresses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.db import as_utc, utcnow
from clarion.store.sql import chunks, upsert
from clarion.store.tables import recipients

FIELDS = ("email", "phone", "locale", "timezone", "push_tokens", "webpush", "webhook_url", "data")


def to_public(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row["id"]}
    for name in FIELDS:
        out[name] = row[name]
    out["created_at"] = as_utc(row["created_at"])
    out["updated_at"] = as_utc(row["updated_at"])
    return out


async def upsert_many(
    conn: AsyncConnection, tenant_id: str, items: Sequence[dict[str, Any]]
) -> None:
    """Create or replace recipients in one statement per thousand."""
    now = utcnow()
    rows = [
        {"tenant_id": tenant_id, "created_at": now, "updated_at": now, **item} for item in items
    ]
    stmt = upsert(conn, recipients, ["tenant_id", "id"], [*FIELDS, "updated_at"])
    for part in chunks(rows, 1000):
        await conn.execute(stmt, part)


async def get(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, Any] | None:
    query = select(recipients).where(
        recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return to_public(row) if row else None


async def load_many(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Recipients by (tenant, id), a query per thousand keys."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for part in chunks(sorted(set(keys)), 1000):
        query = select(recipients).where(tuple_(recipients.c.tenant_id, recipients.c.id).in_(part))
        for row in (await conn.execute(query)).mappings():
            found[(row["tenant_id"], row["id"])] = dict(row)
    return found


async def existing_ids(conn: AsyncConnection, tenant_id: str, ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for part in chunks(sorted(set(ids)), 1000):
        query = select(recipients.c.id).where(
            recipients.c.tenant_id == tenant_id, recipients.c.id.in_(part)
        )
        found.update((await conn.execute(query)).scalars())
    return found
