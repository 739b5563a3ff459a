"""Suppressions: each tenant's list of email addresses that bounced hard or complained.

An address is stored by its key (``domain/contact.py`` ``suppression_key``), once per
tenant: a later report about it updates its reason, source and diagnostic, and keeps when
it was first suppressed. The channel workers ask :func:`matching` once per take, for every
email delivery of the take together (on PostgreSQL one fixed statement over arrays); an
address found there is not sent to. A suppression an operator adds or deletes writes an
audit row (resource ``suppression``) in the same transaction; those that providers report
do not (they change no configuration, and may come by the thousand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.ids import new_id
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.pages import Position, newest_first
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, upsert
from clarion.store.tables import suppressions

Key = tuple[str, str]  # (tenant id, address key)

_MATCHING = (
    "SELECT s.tenant_id, s.address, s.reason FROM suppressions s "
    "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, address) "
    "ON s.tenant_id = k.tenant_id AND s.address = k.address"
)
_UPDATED = ["reason", "source", "detail", "delivery_id", "updated_at"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One address to suppress (its key), and why."""

    address: str
    reason: str
    source: str
    detail: str | None = None
    delivery_id: str | None = None


def public(row: Any) -> dict[str, Any]:
    """A suppression as the API shows it."""
    return {
        "email": row["address"],
        "reason": row["reason"],
        "source": row["source"],
        "detail": row["detail"],
        "delivery_id": row["delivery_id"],
        "created_at": as_utc(row["created_at"]),
        "updated_at": as_utc(row["updated_at"]),
    }


async def add(
    engine: AsyncEngine, tenant_id: str, entries: Sequence[Entry], *, actor: str | None = None
) -> list[dict[str, Any]]:
    """Suppress these addresses (one write), each new one with its first time, each known
    one with its reason, source and diagnostic replaced; the rows as stored. ``actor``: the
    API key of an operator's addition, which is audited."""
    if not entries:
        return []
    now = utcnow()
    latest = {entry.address: entry for entry in entries}  # one row per address
    rows = [
        {
            "tenant_id": tenant_id,
            "address": entry.address,
            "id": new_id("sup"),
            "reason": entry.reason,
            "source": entry.source,
            "detail": entry.detail,
            "delivery_id": entry.delivery_id,
            "created_at": now,
            "updated_at": now,
        }
        for entry in latest.values()
    ]
    s = suppressions
    async with write_tx(engine) as conn:
        await conn.execute(upsert(conn, s, ["tenant_id", "address"], _UPDATED), rows)
        stored: list[dict[str, Any]] = []
        for part in chunks(list(latest), 1000):
            query = select(s).where(s.c.tenant_id == tenant_id, s.c.address.in_(part))
            stored.extend(public(row) for row in (await conn.execute(query)).mappings())
        if actor is not None:
            await audit.record(
                conn,
                *(
                    audit.Change(
                        tenant_id,
                        actor,
                        audit.Resource.SUPPRESSION,
                        row["email"],
                        audit.Action.CREATE,
                        {"reason": {"to": row["reason"]}, "source": {"to": row["source"]}},
                    )
                    for row in stored
                ),
            )
    return stored


async def matching(
    engine: AsyncEngine, keys: Sequence[Key], pg: PgPool | None = None
) -> dict[Key, str]:
    """Which of these (tenant, address key) are suppressed, with the reason: one read for
    all of them (on PostgreSQL one fixed statement)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    if pg is not None:
        tenants, addresses = [k[0] for k in wanted], [k[1] for k in wanted]
        records = await pg.fetch(_MATCHING, tenants, addresses)
        return {(r[0], r[1]): r[2] for r in records}
    s = suppressions
    found: dict[Key, str] = {}
    async with engine.connect() as conn:
        for part in chunks(wanted, 500):
            query = select(s.c.tenant_id, s.c.address, s.c.reason).where(
                tuple_(s.c.tenant_id, s.c.address).in_(part)
            )
            found.update({(r[0], r[1]): r[2] for r in await conn.execute(query)})
    return found


@dataclass(frozen=True, slots=True)
class SuppressionFilter:
    tenant_id: str
    address: str | None = None
    reason: str | None = None


def _where(query: Select[Any], f: SuppressionFilter) -> Select[Any]:
    s = suppressions
    query = query.where(s.c.tenant_id == f.tenant_id)
    if f.address is not None:
        query = query.where(s.c.address == f.address)
    if f.reason is not None:
        query = query.where(s.c.reason == f.reason)
    return query


async def list_page(
    engine: AsyncEngine, f: SuppressionFilter, cursor: Position | None, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """A page of the tenant's suppressions, newest first, and where the next page starts."""
    s = suppressions
    query = newest_first(_where(select(s), f), s.c.created_at, s.c.id, cursor, limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page = rows[:limit]
    following = None
    if len(rows) > limit:
        stamp: datetime | None = as_utc(page[-1]["created_at"])
        assert stamp is not None
        following = Position(stamp, page[-1]["id"])
    return [public(row) for row in page], following


async def get(engine: AsyncEngine, tenant_id: str, address: str) -> dict[str, Any] | None:
    s = suppressions
    query = select(s).where(s.c.tenant_id == tenant_id, s.c.address == address)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return public(row) if row is not None else None


async def remove(engine: AsyncEngine, tenant_id: str, address: str, *, actor: str) -> bool:
    """Take an address off the list (audited); False when it was not on it."""
    s = suppressions
    async with write_tx(engine) as conn:
        query = select(s).where(s.c.tenant_id == tenant_id, s.c.address == address)
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return False
        await conn.execute(delete(s).where(s.c.tenant_id == tenant_id, s.c.address == address))
        before = {"reason": row["reason"], "source": row["source"]}
        await audit.record(
            conn,
            audit.Change(
                tenant_id,
                actor,
                audit.Resource.SUPPRESSION,
                address,
                audit.Action.DELETE,
                audit.diff(before, None),
            ),
        )
    return True
