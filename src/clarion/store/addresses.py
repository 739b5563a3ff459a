"""Removing addresses a service reported gone: push tokens, web push subscriptions and chat
addresses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.chat import address_key
from clarion.domain.models import Channel
from clarion.store.db import utcnow, write_tx
from clarion.store.tables import recipients

# channel -> (recipients column, the field of an entry that the service names; None: the
# entry's whole address, domain/chat.py's ``address_key``)
_COLUMNS: dict[Channel, tuple[str, str | None]] = {
    Channel.PUSH: ("push_tokens", "token"),
    Channel.WEBPUSH: ("webpush", "endpoint"),
    Channel.CHAT: ("chat", None),
}


def dead_values(value: Any, field: str | None = "token") -> set[str]:
    """Normalise what a provider reported gone: a token, an endpoint, or a list of them;
    with ``field`` None, chat addresses (by their key)."""
    if value is None:
        return set()
    if field is None:
        if isinstance(value, dict):
            key = address_key(value)
            return {key} if key else set()
        if isinstance(value, list | tuple):
            return set().union(*(dead_values(item, None) for item in value))
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        found = value.get("token") or value.get("endpoint")
        return {str(found)} if found else set()
    if isinstance(value, Iterable):
        return set().union(*(dead_values(item) for item in value))
    return set()


def _identity(entry: Any, field: str | None) -> Any:
    if field is None:
        return address_key(entry)
    return entry.get(field) if isinstance(entry, dict) else None


async def remove_dead(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, channel: str, dead: Any
) -> int:
    """Drop the recipient's entries that the service said are gone; returns how many."""
    target = _COLUMNS.get(Channel(channel)) if channel in Channel._value2member_map_ else None
    if target is None:
        return 0
    column, field = target
    gone = dead_values(dead, field)
    if not gone:
        return 0
    where = (recipients.c.tenant_id == tenant_id) & (recipients.c.id == recipient_id)
    async with write_tx(engine) as conn:
        current = (
            await conn.execute(select(recipients.c[column]).where(where).with_for_update())
        ).scalar()
        entries = list(current or [])
        kept = [e for e in entries if _identity(e, field) not in gone]
        if len(kept) == len(entries):
            return 0
        await conn.execute(
            update(recipients).where(where).values({column: kept, "updated_at": utcnow()})
        )
    return len(entries) - len(kept)
