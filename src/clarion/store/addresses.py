"""Removing addresses a service reported gone: push tokens and web push subscriptions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.models import Channel
from clarion.store.db import utcnow, write_tx
from clarion.store.tables import recipients

# channel -> (recipients column, the field of an entry that the service names)
_COLUMNS = {Channel.PUSH: ("push_tokens", "token"), Channel.WEBPUSH: ("webpush", "endpoint")}


def dead_values(value: Any) -> set[str]:
    """Normalise what a provider reported gone: a token, an endpoint, or a list of them."""
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        found = value.get("token") or value.get("endpoint")
        return {str(found)} if found else set()
    if isinstance(value, Iterable):
        return set().union(*(dead_values(item) for item in value))
    return set()


async def remove_dead(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, channel: str, dead: Any
) -> int:
    """Drop the recipient's entries that the service said are gone; returns how many."""
    gone = dead_values(dead)
    target = _COLUMNS.get(Channel(channel)) if channel in Channel._value2member_map_ else None
    if not gone or target is None:
        return 0
    column, field = target
    where = (recipients.c.tenant_id == tenant_id) & (recipients.c.id == recipient_id)
    async with write_tx(engine) as conn:
        current = (
            await conn.execute(select(recipients.c[column]).where(where).with_for_update())
        ).scalar()
        entries = list(current or [])
        kept = [e for e in entries if not (isinstance(e, dict) and e.get(field) in gone)]
        if len(kept) == len(entries):
            return 0
        await conn.execute(
            update(recipients).where(where).values({column: kept, "updated_at": utcnow()})
        )
    return len(entries) - len(kept)
