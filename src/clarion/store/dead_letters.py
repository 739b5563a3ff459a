"""Dead letters: deliveries that ran out of attempts, listed and put back in the queue.

A replay is a claim in the store: one ``UPDATE ... WHERE status = 'dead'`` moves the rows
back to ``queued`` (attempts 0, reason and error cleared) and returns exactly the rows it
changed, so two replays running at once never publish the same delivery twice. Each
replayed delivery gets a ``replayed`` event; its earlier events stay. The rows come back
with their notification's stored traceparent, so a replay joins the original trace. A
replay that requeues anything writes an audit row in its transaction (resource
``dead_letter``, action ``replay``): the delivery's id, or ``matching`` with the filter and
how many were requeued.

No index of ``deliveries`` holds its status (migration 0038): a dead letter is found
through its ``dead`` event, a range of ``ix_delivery_events_tenant_status_created``
(tenant, status, time, delivery id), and its delivery by id. Only deliveries still ``dead``
count (not one replayed since, nor one that erasure turned ``failed``), each by its latest
``dead`` event (no later one of the same delivery: a few entries of the events' primary
key, which leads with the delivery id on PostgreSQL, or of
``ix_delivery_events_delivery_id`` on SQLite). That event is written by the statement that
makes the delivery dead, at the delivery's new ``updated_at``: its time is when the letter
went dead, what ``after`` and ``before`` bound, the order and the cursor's time. A page
costs its size in index entries, each with a look at its delivery, plus the ``dead``
events it passes of deliveries no longer dead (replayed or erased since).

No index holds a dead letter's channel or provider either: a page filtered by them walks
the tenant's ``dead`` events as an unfiltered one does, and stops after
:data:`~clarion.store.message_log.SCAN_LIMIT` of them (the message log's bound), so that a
rare channel does not read the tenant's every dead letter per request. Such a page may hold
fewer letters than asked for, even none, its cursor then after the last event examined.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    exists,
    func,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.models import DeliveryStatus
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.message_log import SCAN_LIMIT
from clarion.store.notifications import delivery_to_public
from clarion.store.pages import Position, bounded_walk, newest_first, page_of
from clarion.store.sql import chunks
from clarion.store.tables import (
    deliveries,
    delivery_claims,
    delivery_events,
    notifications,
    tenants,
)

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


# A dead letter's `dead` event, another event of the same delivery, and the delivery: named
# apart from the table a replay updates, so that no subquery is correlated with it.
_event = delivery_events.alias("e")
_later = delivery_events.alias("later")
_row = deliveries.alias("d")
_DEAD = DeliveryStatus.DEAD.value


def _latest_death(event: Any) -> ColumnElement[bool]:
    """``event`` is its delivery's latest ``dead`` event: a letter that died, was replayed
    and died again is one letter, dead since the second time. The later events of the
    delivery are a range of the events' primary key (``delivery_id``, ``id``); ``OFFSET 0``
    keeps PostgreSQL from turning the ``NOT EXISTS`` into an anti-join, which it may plan
    as a read of every ``dead`` event: it stays a probe per event read."""
    later = _later
    return ~exists(
        select(later.c.id)
        .where(
            later.c.delivery_id == event.c.delivery_id,
            later.c.id > event.c.id,
            later.c.status == _DEAD,
        )
        .limit(1)
        .offset(0)
    )


def _still_dead(event: Any, row: Any) -> list[ColumnElement[bool]]:
    """``event`` is a ``dead`` event of its delivery ``row`` (joined by id), the latest,
    and the delivery is dead still."""
    return [event.c.status == _DEAD, *_dead_since(event, row)]


def _dead_since(event: Any, row: Any) -> list[ColumnElement[bool]]:
    """No later death of the delivery ``row`` than ``event``, and the delivery is dead
    still: what makes a ``dead`` event a dead letter."""
    return [row.c.status == _DEAD, _latest_death(event)]


def _joined() -> Any:
    """An event and its delivery, by the delivery's id alone: the event's tenant is its
    delivery's, and a condition on the delivery's tenant may be planned as a read of all
    the tenant's deliveries."""
    e, d = _event, _row
    return e.join(d, d.c.id == e.c.delivery_id)


def _where(query: Select[Any], f: DeadFilter) -> Select[Any]:
    """``query`` over the tenant's dead letters that match ``f``: their latest ``dead``
    event (``e``, a range of the tenant's entries in the events' status index) joined to
    their delivery (``d``)."""
    e, d = _event, _row
    query = query.select_from(_joined()).where(e.c.tenant_id == f.tenant_id, *_still_dead(e, d))
    if f.channel:
        query = query.where(d.c.channel == f.channel)
    if f.provider:
        query = query.where(d.c.provider == f.provider)
    if f.after:
        query = query.where(e.c.created_at > f.after)
    if f.before:
        query = query.where(e.c.created_at < f.before)
    return query


def found(f: DeadFilter, limit: int) -> Select[Any]:
    """The ids of up to ``limit`` dead letters matching ``f``, in no order: what a count
    reads. Asked in the index's order, a walk expected to reach the end of the tenant's
    range may be planned as a read of the whole range and a sort; in none, it stops at
    ``limit``."""
    return _where(select(_event.c.delivery_id), f).limit(limit)


def oldest(f: DeadFilter, limit: int) -> Select[Any]:
    """The ids of the oldest ``limit`` dead letters matching ``f``, oldest first."""
    e = _event
    query = _where(select(e.c.delivery_id), f)
    return query.order_by(e.c.created_at, e.c.delivery_id).limit(limit)


def page_query(f: DeadFilter, cursor: Position | None, limit: int) -> Select[Any]:
    """Up to ``limit`` dead letters matching ``f`` after ``cursor``, newest first: their
    delivery's columns, and when each went dead (``dead_at``). Filtered by a channel or a
    provider, the rows of :func:`_walked` (a bounded walk)."""
    if f.channel or f.provider:
        return _walked(f, cursor, limit)
    e = _event
    dead = _where(select(_row, e.c.created_at.label("dead_at")), f)
    return newest_first(dead, e.c.created_at, e.c.delivery_id, cursor, limit)


def _walked(f: DeadFilter, cursor: Position | None, limit: int) -> Select[Any]:
    """Of the tenant's next :data:`SCAN_LIMIT` ``dead`` events after ``cursor`` (in the
    time bounds of ``f``), newest first: the letters still dead that match ``f``'s channel
    and provider (``matched``), the last event examined (``walk_end``) and the one after it
    (``walk_goes_on``: more is left to examine). At most ``limit + 1`` rows: ``limit``
    matches fill the caller's page and its row more, and fewer come with those last two
    rows (store/pages.py ``bounded_walk``), over the events' status index. Only the rows
    kept are read whole (by id)."""
    e, d = _event, _row
    ranged = [e.c.tenant_id == f.tenant_id, e.c.status == _DEAD]
    if f.after:
        ranged.append(e.c.created_at > f.after)
    if f.before:
        ranged.append(e.c.created_at < f.before)
    checked = _dead_since(e, d)
    if f.channel:
        checked.append(d.c.channel == f.channel)
    if f.provider:
        checked.append(d.c.provider == f.provider)
    walk = (
        select(e.c.delivery_id, e.c.created_at, and_(*checked).label("matched"))
        .select_from(_joined())
        .where(*ranged)
    )
    kept = bounded_walk(walk, e.c.created_at, e.c.delivery_id, cursor, limit, SCAN_LIMIT)
    dl = deliveries
    return (
        select(dl, kept.c.created_at.label("dead_at"))
        .add_columns(kept.c.matched, kept.c.walk_end, kept.c.walk_goes_on)
        .select_from(kept.join(dl, dl.c.id == kept.c.delivery_id))
        .order_by(kept.c.created_at.desc(), kept.c.delivery_id.desc())
    )


def public(row: Any) -> dict[str, Any]:
    return {**delivery_to_public(row), "notification_id": row["notification_id"]}


async def list_dead(
    engine: AsyncEngine, f: DeadFilter, cursor: Position | None, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """A page of dead letters, newest first, and the cursor of the next page (None: nothing
    more to examine). Filtered by a channel or a provider, the page holds the matching
    letters among the next :data:`SCAN_LIMIT` ``dead`` events: fewer than ``limit`` (even
    none) when the walk stopped at its bound first, the next page then starting after the
    last event examined."""
    query = page_query(f, cursor, limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page, following = page_of(rows, limit, _position)
    return [public(row) for row in page], following


def _position(row: Any) -> Position:
    stamp = as_utc(row["dead_at"])
    assert stamp is not None
    return Position(stamp, row["id"])


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
    rows this call changed and whether more remain.

    The letters are found first, outside the write: finding them walks the tenant's
    ``dead`` events, past every letter that does not match (a rare channel among many dead
    letters), and on SQLite a write transaction would hold the one writer, every tenant's
    commits and sends waiting, for that long. The write then claims them by id, each only
    if it is dead still: a replay running at the same time claims none of them again."""
    async with engine.connect() as conn:
        found = list((await conn.execute(oldest(f, limit + 1))).scalars())
    more, found = len(found) > limit, found[:limit]
    if not found:
        return [], more
    rows: list[dict[str, Any]] = []
    async with write_tx(engine) as conn:
        for part in chunks(found, 1000):
            rows += await _claim(conn, part)
        place = {delivery_id: n for n, delivery_id in enumerate(found)}
        rows.sort(key=lambda row: place[row["id"]])  # oldest first, as found
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


def backlog_query(by_tenant: bool, cap: int, *, lateral: bool) -> Select[Any]:
    """Dead letters by channel (and tenant), counting at most ``cap + 1`` of them.

    The events' status index leads with the tenant, and no index orders every tenant's
    dead letters together: the count walks the tenants, one after the other, and each
    tenant's ``dead`` events in the index, and stops at the ``cap + 1``-th letter found.
    However many tenants and dead letters there are, it reads at most that many letters,
    besides the events of letters no longer dead it passes, and one look into the index
    per tenant it reaches. Up to ``cap`` the counts are exact; past it, the backlog is larger
    than ``cap`` and the split by channel (and tenant) is that of the letters counted, which
    are neither the newest nor spread over every tenant. No order is asked for: a walk in
    an order may be planned as a read of a whole tenant's events and a sort.

    ``lateral`` (PostgreSQL): each tenant's walk is a ``LATERAL`` subquery, itself capped,
    so that it is run tenant by tenant on the index. SQLite, which has no ``LATERAL``, runs
    the tenants' ids as an ``IN`` list, a range of the index per id.
    """
    t, e, d = tenants, _event, _row
    if lateral:
        walk = (
            select(d.c.channel)
            .select_from(_joined())
            .where(e.c.tenant_id == t.c.id, *_still_dead(e, d))
            .limit(cap + 1)
            .lateral("walk")
        )
        counted = (
            select(walk.c.channel, t.c.id.label("tenant_id"))
            .select_from(t.join(walk, true()))
            .limit(cap + 1)
            .subquery()
        )
    else:
        counted = (
            select(d.c.channel, e.c.tenant_id)
            .select_from(_joined())
            .where(e.c.tenant_id.in_(select(t.c.id)), *_still_dead(e, d))
            .limit(cap + 1)
            .subquery()
        )
    columns = [counted.c.channel, *([counted.c.tenant_id] if by_tenant else [])]
    return select(*columns, func.count()).group_by(*columns)


async def backlog(engine: AsyncEngine, by_tenant: bool, cap: int) -> list[tuple[Any, ...]]:
    """``(channel, [tenant,] count)`` of at most ``cap + 1`` dead letters
    (:func:`backlog_query`)."""
    query = backlog_query(by_tenant, cap, lateral=engine.dialect.name == "postgresql")
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(query)).all()]
