"""Recipients: the tenant's users, their addresses and their preferences.

Preferences live in the ``preferences`` JSON column of the recipient's row (NULL until set)::

    {"channels": {"sms": False},
     "categories": {"marketing": {"email": False, "push": True}},
     "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris" | None}
                    | None,
     "snooze_until": "2026-11-24T08:00:00Z" | None}

Replacing a recipient (``upsert_many``) leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import chunks, first_row, upsert
from clarion.store.tables import recipients

FIELDS = (
    "email",
    "phone",
    "locale",
    "timezone",
    "push_tokens",
    "webpush",
    "webhook_url",
    "chat",
    "whatsapp",
    "data",
)


def empty_preferences() -> dict[str, Any]:
    """What a recipient who never set preferences has: everything allowed, no quiet hours."""
    return {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }


def preferences_of(row: Any) -> dict[str, Any]:
    """The preferences of a recipient row (as ``load_many`` returns it), in full shape."""
    stored = row.get("preferences")
    return {**empty_preferences(), **stored} if stored else empty_preferences()


def to_public(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row["id"]}
    for name in FIELDS:
        out[name] = row[name]
    out["created_at"] = as_utc(row["created_at"])
    out["updated_at"] = as_utc(row["updated_at"])
    return out


async def upsert_many(engine: AsyncEngine, tenant_id: str, items: Sequence[dict[str, Any]]) -> None:
    """Create or replace recipients in one transaction, one statement per thousand."""
    now = utcnow()
    rows = [
        {"tenant_id": tenant_id, "created_at": now, "updated_at": now, **item} for item in items
    ]
    async with write_tx(engine) as conn:
        stmt = upsert(conn, recipients, ["tenant_id", "id"], [*FIELDS, "updated_at"])
        for part in chunks(rows, 1000):
            await conn.execute(stmt, part)


async def get(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, Any] | None:
    query = select(recipients).where(
        recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id
    )
    row = await first_row(engine, query)
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


async def get_preferences(
    engine: AsyncEngine, tenant_id: str, recipient_id: str
) -> dict[str, Any] | None:
    """The recipient's preferences, or None if there is no such recipient."""
    query = select(recipients.c.preferences).where(
        recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id
    )
    row = await first_row(engine, query)
    return preferences_of(row) if row is not None else None


async def set_preferences(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, preferences: dict[str, Any]
) -> bool:
    """Replace the recipient's preferences; False if there is no such recipient."""
    stmt = (
        update(recipients)
        .where(recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id)
        .values(preferences=preferences, updated_at=utcnow())
    )
    async with write_tx(engine) as conn:
        result = await conn.execute(stmt)
    return bool(result.rowcount)


async def turn_off(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, category: str, channel: str
) -> bool:
    """Set ``categories[category][channel] = false``, keeping every other preference; False
    if there is no such recipient. Read and written in one transaction, the row locked, so
    a concurrent change of other preferences is not lost."""
    where = (recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id)
    async with write_tx(engine) as conn:
        query = select(recipients.c.preferences).where(*where).with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return False
        preferences = preferences_of(row)
        categories = dict(preferences.get("categories") or {})
        categories[category] = {**categories.get(category, {}), channel: False}
        preferences["categories"] = categories
        await conn.execute(
            update(recipients).where(*where).values(preferences=preferences, updated_at=utcnow())
        )
    return True
