"""Dead letters: deliveries that ran out of attempts, listed and put back in the queue.

A replay is a claim in the store: one ``UPDATE ... WHERE status = 'dead'`` moves the rows
back to ``queued`` (attempts 0, reason and error cleared) and returns exactly the rows it
changed, so two replays running at once never publish the same delivery twice. Each
replayed delivery gets a ``replayed`` event; its earlier events stay. The rows come back
with their notification's stored traceparent, so a replay joins the original trace. A
replay that requeues anything writes an audit row in its transaction (resource
``dead_letter``, action ``replay``): the delivery's id, or ``matching`` with the filter and
how many were requeued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.models import DeliveryStatus
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.notifications import delivery_to_public
from clarion.store.pages import Position, newest_first
from clarion.store.sql import chunks
from clarion.store.tables import deliveries, delivery_claims, delivery_events, notifications

MAX_REPLAY = 10_000
REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters: ``after``/``before`` bound the time each went dead."""

    tenant_id: str
    channel: str | None = None
    provider: str | None = None
    after: datetime | None = None
    before: datetime | None = None


def _where(query: Select[Any], f: DeadFilter) -> Select[Any]:
    d = deliveries
    query = query.where(d.c.tenant_id == f.tenant_id, d.c.status == DeliveryStatus.DEAD)
    if f.channel:
        query = query.where(d.c.channel == f.channel)
    if f.provider:
        query = query.where(d.c.provider == f.provider)
    if f.after:
        query = query.where(d.c.updated_at > f.after)
    if f.before:
        query = query.where(d.c.updated_at < f.before)
    return query


def public(row: Any) -> dict[str, Any]:
    return {**delivery_to_public(row), "notification_id": row["notification_id"]}


async def list_dead(
    engine: AsyncEngine, f: DeadFilter, cursor: Position | None, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """A page of dead letters, newest first, and the cursor of the next page."""
    d = deliveries
    query = newest_first(_where(select(d), f), d.c.updated_at, d.c.id, cursor, limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page = rows[:limit]
    following = None
    if len(rows) > limit:
        last = page[-1]
        stamp = as_utc(last["updated_at"])
        assert stamp is not None
        following = Position(stamp, last["id"])
    return [public(row) for row in page], following


async def status_of(engine: AsyncEngine, tenant_id: str, delivery_id: str) -> str | None:
    query = select(deliveries.c.status).where(
        deliveries.c.id == delivery_id, deliveries.c.tenant_id == tenant_id
    )
    async with engine.connect() as conn:
        status: str | None = (await conn.execute(query)).scalar()
    return status


def _requeue(ids_query: Any) -> Any:
    """Back to the queue: the same delivery, as if it had never been tried."""
    d = deliveries
    now = utcnow()
    return (
        update(d)
        .where(d.c.id.in_(ids_query), d.c.status == DeliveryStatus.DEAD)
        .values(
            status=DeliveryStatus.QUEUED,
            attempts=0,
            reason=None,
            last_error=None,
            scheduled_for=None,
            updated_at=now,
            # Waiting again, long after the sweeper's pass over its time: watched from now
            # (store/sweeps.py).
            watched_since=now,
        )
        .returning(*d.c)
    )


async def _claim(conn: AsyncConnection, ids_query: Any) -> list[dict[str, Any]]:
    rows = [dict(row) for row in (await conn.execute(_requeue(ids_query))).mappings()]
    # Its attempts start again from the first: the claims of the old ones go.
    k = delivery_claims
    for part in chunks([row["id"] for row in rows], 1000):
        await conn.execute(delete(k).where(k.c.id.in_(part)))
    now = utcnow()
    events = [
        {
            "delivery_id": row["id"],
            "tenant_id": row["tenant_id"],
            "status": REPLAYED,
            "detail": None,
            "created_at": now,
        }
        for row in rows
    ]
    for part in chunks(events, 1000):
        await conn.execute(delivery_events.insert(), part)
    await _add_traces(conn, rows)
    return rows


async def _add_traces(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Each row's notification's stored traceparent (``trace``): a replayed delivery
    joins the trace its notification was accepted in."""
    n = notifications
    ids = sorted({row["notification_id"] for row in rows})
    traces: dict[str, str | None] = {}
    for part in chunks(ids, 1000):
        query = select(n.c.id, n.c.trace).where(n.c.id.in_(part), n.c.trace.is_not(None))
        traces.update((row.id, row.trace) for row in await conn.execute(query))
    for row in rows:
        row["trace"] = traces.get(row["notification_id"])


def _replayed(tenant_id: str, actor: str, name: str, diff: dict[str, Any]) -> audit.Change:
    return audit.Change(
        tenant_id, actor, audit.Resource.DEAD_LETTER, name, audit.Action.REPLAY, diff
    )


async def replay_one(
    engine: AsyncEngine, tenant_id: str, delivery_id: str, *, actor: str
) -> dict[str, Any] | None:
    """Requeue one dead delivery; ``None`` if it is not (or no longer) dead."""
    d = deliveries
    ids = select(d.c.id).where(d.c.id == delivery_id, d.c.tenant_id == tenant_id)
    async with write_tx(engine) as conn:
        rows = await _claim(conn, ids)
        if rows:
            status = {"status": {"from": DeliveryStatus.DEAD.value, "to": rows[0]["status"]}}
            await audit.record(conn, _replayed(tenant_id, actor, delivery_id, status))
    return rows[0] if rows else None


async def replay_many(
    engine: AsyncEngine, f: DeadFilter, limit: int = MAX_REPLAY, *, actor: str
) -> tuple[list[dict[str, Any]], bool]:
    """Requeue up to ``limit`` dead deliveries matching ``f``, oldest first; returns the
    rows this call changed and whether more remain."""
    d = deliveries
    ids = _where(select(d.c.id), f).order_by(d.c.updated_at, d.c.id).limit(limit)
    async with write_tx(engine) as conn:
        rows = await _claim(conn, ids)
        more = (await conn.execute(_where(select(d.c.id), f).limit(1))).first() is not None
        if rows:
            shown: dict[str, Any] = {"replayed": {"to": len(rows)}}
            for name in ("channel", "provider", "after", "before"):
                value = getattr(f, name)
                if isinstance(value, datetime):
                    value = value.isoformat()
                if value is not None:
                    shown[name] = {"to": value}
            await audit.record(conn, _replayed(f.tenant_id, actor, "matching", shown))
    return rows, more


def backlog_query(by_tenant: bool, cap: int) -> Select[Any]:
    """Dead letters by channel (and tenant) among the newest ``cap + 1``: a backward range
    of the (status, updated_at) index, so a count reads at most that many rows however
    large the backlog."""
    columns = [deliveries.c.channel, *([deliveries.c.tenant_id] if by_tenant else [])]
    newest = (
        select(*columns)
        .where(deliveries.c.status == DeliveryStatus.DEAD.value)
        .order_by(deliveries.c.updated_at.desc())
        .limit(cap + 1)
        .subquery()
    )
    return select(*newest.c, func.count()).group_by(*newest.c)


async def backlog(engine: AsyncEngine, by_tenant: bool, cap: int) -> list[tuple[Any, ...]]:
    """``(channel, [tenant,] count)`` of the newest ``cap + 1`` dead letters
    (:func:`backlog_query`)."""
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(backlog_query(by_tenant, cap))).all()]
