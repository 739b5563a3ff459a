"""Opens and clicks of email (docs/tracking.md): events on their delivery's timeline.

An open or a click is a row of ``delivery_events`` (``status`` ``opened`` or ``clicked``;
a click's ``detail`` is the link's target), written by one statement that checks, in the
same statement, that the delivery is the tenant's and that it has fewer than the
deployment's cap of such rows: a hit costs one insert, and a delivery fetched in a loop
cannot grow its timeline without bound. Erasure clears ``detail`` (the target may name the
person) and retention removes the rows with their delivery, as it does every event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store.db import utcnow, write_tx
from clarion.store.tables import deliveries, delivery_events

OPENED, CLICKED = "opened", "clicked"
TRACKED = (OPENED, CLICKED)


def _value(name: str, value: Any, column: Any) -> Any:
    return bindparam(name, value, type_=column.type)


async def record(
    engine: AsyncEngine,
    tenant_id: str,
    delivery_id: str,
    event: str,
    url: str | None,
    limit: int,
) -> int | None:
    """Record one ``opened`` or ``clicked`` of the tenant's delivery: the new event's id,
    or None when the tenant has no such delivery or it has ``limit`` of them already."""
    e, d = delivery_events, deliveries
    theirs = exists().where(d.c.id == delivery_id, d.c.tenant_id == tenant_id)
    tracked = (
        select(func.count())
        .select_from(e)
        .where(e.c.delivery_id == delivery_id, e.c.status.in_(TRACKED))
        .scalar_subquery()
    )
    row = select(
        _value("t_delivery", delivery_id, e.c.delivery_id),
        _value("t_tenant", tenant_id, e.c.tenant_id),
        _value("t_status", event, e.c.status),
        _value("t_detail", url, e.c.detail),
        _value("t_at", utcnow(), e.c.created_at),
    ).where(theirs, tracked < bindparam("t_limit", limit, type_=Integer()))
    columns = ["delivery_id", "tenant_id", "status", "detail", "created_at"]
    statement = e.insert().from_select(columns, row).returning(e.c.id)
    async with write_tx(engine) as conn:
        found = (await conn.execute(statement)).scalar()
    return None if found is None else int(found)


async def is_first(engine: AsyncEngine, delivery_id: str, event: str, event_id: int) -> bool:
    """Whether event ``event_id`` is its delivery's first of its kind."""
    e = delivery_events
    query = (
        select(e.c.id)
        .where(e.c.delivery_id == delivery_id, e.c.status == event, e.c.id < event_id)
        .limit(1)
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).first() is None


def summary(events: Sequence[tuple[str, datetime | None]]) -> dict[str, Any]:
    """A delivery's opens and clicks from its events (``status``, ``at``), oldest first:
    how many were recorded and when the first of each was. A click counts as an open too
    (images may be blocked: the click shows the email was opened)."""
    opens = [at for status, at in events if status == OPENED]
    clicks = [at for status, at in events if status == CLICKED]
    first_open = min((at for at in opens + clicks[:1] if at is not None), default=None)
    return {
        "opens": len(opens),
        "clicks": len(clicks),
        "opened": bool(opens or clicks),
        "first_opened_at": first_open,
        "first_clicked_at": clicks[0] if clicks else None,
    }
