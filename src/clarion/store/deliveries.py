"""Deliveries and their status events: bulk writes for the planner and the workers."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.delivery import Stored
from clarion.domain.models import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    DeliveryStatus,
    NotificationStatus,
)
from clarion.domain.status import StatusChange
from clarion.store import bulk, day_partitions, delivery_rows
from clarion.store.db import utcnow, write_tx
from clarion.store.pg import PgPool, fixed_plan
from clarion.store.sql import (
    chunks,
    db_now,
    execute_many,
    first_row,
    insert_ignoring_conflicts,
)
from clarion.store.tables import deliveries, delivery_claims, delivery_events, notifications

# Deliveries still to be sent: queued now, or scheduled for later (quiet hours).
WAITING = WAITING_STATUSES
_EVENTS = delivery_events.insert()
# A provider's report that the recipient read a message: an event of its delivery's, the
# delivery staying `delivered` (providers/base.py ``READ``).
READ = "read"


async def insert_planned(conn: AsyncConnection, items: Sequence[Stored], at: datetime) -> set[str]:
    """Insert new deliveries, with an event for each one created in another state than
    ``queued`` (a delivery's creation is its ``queued`` event); none of a notification
    cancelled meanwhile. The ids inserted.
    (PostgreSQL: ``bulk.store_plan``.)"""
    notes = list({item.delivery.notification for item in items})
    cancelled: set[str] = set()
    for part in chunks(notes, 1000):
        query = select(notifications.c.id).where(
            notifications.c.id.in_(part), notifications.c.status == NotificationStatus.CANCELLED
        )
        cancelled.update((await conn.execute(query)).scalars())
    rows = [
        delivery_rows.row(item, at) for item in items if item.delivery.notification not in cancelled
    ]
    for part in chunks(rows, 1000):
        await execute_many(conn, insert_ignoring_conflicts(conn, deliveries), part)
    events = [
        {
            "delivery_id": row["id"],
            "tenant_id": row["tenant_id"],
            "status": row["status"],
            "detail": row["reason"],
            "created_at": at,
        }
        for row in rows
        if row["status"] != DeliveryStatus.QUEUED
    ]
    for part in chunks(events, 1000):
        await execute_many(conn, _EVENTS, part)
    return {row["id"] for row in rows}


async def queued_of_notifications(
    conn: AsyncConnection, notification_ids: Sequence[str]
) -> list[Stored]:
    """Deliveries of these notifications still waiting to be sent (now or later)."""
    found: list[Stored] = []
    for part in chunks(list(notification_ids), 1000):
        query = select(deliveries).where(
            deliveries.c.notification_id.in_(part),
            deliveries.c.status.in_(WAITING),
        )
        found.extend(delivery_rows.stored_of(row) for row in (await conn.execute(query)).mappings())
    return found


# By primary key only, the status compared here: with `status = ANY(...)` in the query, a
# planner without fresh statistics may read the status index instead, every row `sent` so
# far, on every take.
_STATUSES = "SELECT id, status, attempts FROM deliveries WHERE id = ANY($1::text[])"


@functools.lru_cache(maxsize=16)  # a few days at a time
def _statuses_on(table: str) -> str:
    """:data:`_STATUSES` naming ``table``: ``deliveries``, or one of its day partitions
    (store/day_partitions.py), whose statement is planned once."""
    if table == "deliveries":
        return _STATUSES
    return fixed_plan(_STATUSES.replace("FROM deliveries ", f"FROM {table} "), grown=(table,))


def _spent(status: str, attempts: int, attempt: int) -> bool:
    """Whether a delivery in this state must not get ``attempt``: it is final or cancelled,
    or that attempt's outcome is stored already (a copy handed out again, by the broker or
    the sweeper). One whose attempt is claimed but has no outcome yet is left to the claim:
    its worker may have died."""
    return status in TERMINAL_STATUSES or attempts >= attempt


async def spent_ids(
    engine: AsyncEngine, items: Sequence[tuple[str, int]], pg: PgPool | None = None
) -> set[str]:
    """Which of these (delivery id, attempt) must not be sent (see :func:`_spent`). Asked
    once per take by every worker, a cheap early screen (the claim before the provider call
    is the guarantee): on PostgreSQL one fixed statement."""
    wanted = dict(items)
    if pg is not None:
        ids = list(wanted)
        rows = await day_partitions.fetch(pg, ids, _statuses_on, ids)
    else:
        rows = []
        async with engine.connect() as conn:
            for part in chunks(list(wanted), 1000):
                query = select(deliveries.c.id, deliveries.c.status, deliveries.c.attempts)
                rows.extend((await conn.execute(query.where(deliveries.c.id.in_(part)))).all())
    return {row[0] for row in rows if _spent(row[1], row[2], wanted[row[0]])}


def in_flight(d: Any = deliveries) -> ColumnElement[bool]:
    """Whether the delivery is being sent: it waits, and its claim is live and ahead of the
    attempts its outcomes have counted (the claim of an attempt whose outcome is stored, or
    whose worker died, is not)."""
    k = delivery_claims
    return and_(
        d.c.status.in_(WAITING),
        exists().where(
            k.c.id == d.c.id,
            k.c.attempt > d.c.attempts,
            k.c.leased_until > db_now(),
            ~k.c.cancelled,
        ),
    )


def shown_status(d: Any = deliveries) -> ColumnElement[str]:
    """The delivery's status as the API shows it: ``sending`` while it is in flight."""
    return case((in_flight(d), DeliveryStatus.SENDING.value), else_=d.c.status)


def select_deliveries(d: Any = deliveries) -> Select[Any]:
    """Every column of the delivery, its status as :func:`shown_status`."""
    return select(*(c for c in d.c if c.name != "status"), shown_status(d).label("status"))


async def claim(
    engine: AsyncEngine, items: Sequence[tuple[str, int]], lease: float, pg: PgPool | None = None
) -> set[str]:
    """Claim attempts right before their provider calls: each (delivery id, attempt n), ids
    distinct, is claimed for ``lease`` seconds if the delivery waits for attempt n, its
    notification is not cancelled and no live claim holds it (store/bulk.py ``_CLAIM`` says
    when exactly). The ids claimed: only those may be sent. Of those left out, a waiting
    delivery of a cancelled notification is cancelled (:func:`stop_waiting`).

    A claim is a row of ``delivery_claims``, not a change to the delivery: its outcome,
    written after the call, counts the attempt, so ``attempts`` is the number of calls whose
    outcome is known; a claim whose lease ran out (its worker died in the call) is taken
    again for the same attempt."""
    if not items:
        return set()
    wanted = dict(items)
    if pg is not None:
        claimed = await bulk.claim(pg, list(wanted.items()), lease)
    else:
        now = utcnow()
        async with write_tx(engine) as conn:
            claimed = await _claim_rows(conn, wanted, now, now + timedelta(seconds=lease))
    if len(claimed) < len(wanted):
        await stop_cancelled(engine, [i for i in wanted if i not in claimed])
    return claimed


def _padded(rows: Sequence[Sequence[Any]], width: int) -> tuple[int, list[Any]]:
    """SQLite's rows of one ``VALUES`` statement: their count rounded up to a power of two,
    and their values in a row, the rows added all NULL (an id of no delivery). Statements
    of 1, 2, 4, ... rows: a batch is one statement, its text one of a few kept prepared."""
    size = 1 << (len(rows) - 1).bit_length()
    flat = [value for row in rows for value in row]
    flat += [None] * width * (size - len(rows))
    return size, flat


# Rows per claim statement at most (two parameters each).
_CLAIMS_AT_ONCE = 512


@functools.cache
def _claiming(rows: int) -> str:
    """SQLite's claim of ``rows`` attempts in one statement, store/bulk.py ``_CLAIM``'s rule
    as a join: the lease's end, then a row of (delivery id, attempt) per attempt, then the
    time now. Each delivery is read by primary key, with the claim it holds (``p``)."""
    values = ", ".join(["(?, ?)"] * rows)
    return (
        "INSERT INTO delivery_claims (id, attempt, leased_until) "
        f"SELECT d.id, c.column2, ? FROM (VALUES {values}) AS c "
        "JOIN deliveries AS d ON d.id = c.column1 "
        "LEFT JOIN delivery_claims AS p ON p.id = d.id "
        f"WHERE d.status IN {bulk.WAITING_SQL} "
        # Its attempt before this one claimed, its outcome not stored yet: the retry was
        # published first.
        "AND (d.attempts = c.column2 - 1 OR (d.attempts = c.column2 - 2 "
        "AND p.attempt = c.column2 - 1)) "
        # No claim holds it: none, one of an earlier attempt, or this attempt's lapsed.
        "AND (p.id IS NULL OR (NOT p.cancelled AND (p.attempt < c.column2 "
        "OR (p.attempt = c.column2 AND p.leased_until < ?)))) "
        "AND NOT EXISTS (SELECT 1 FROM notifications AS n WHERE n.id = d.notification_id "
        f"AND n.status = '{NotificationStatus.CANCELLED.value}') "
        "ON CONFLICT (id) DO UPDATE SET attempt = excluded.attempt, "
        "leased_until = excluded.leased_until "
        "RETURNING id"
    )


async def _claim_rows(
    conn: AsyncConnection, wanted: dict[str, int], now: datetime, until: datetime
) -> set[str]:
    """SQLite's claim: one statement per batch of up to ``_CLAIMS_AT_ONCE`` (padded to a
    power of two with rows of no delivery, so that a few texts stay prepared). Its writers
    take turns (``write_tx``): what the statement reads does not change before it writes."""
    dialect = conn.dialect
    process = delivery_claims.c.leased_until.type.dialect_impl(dialect).bind_processor(dialect)
    until_value, now_value = (until, now) if process is None else (process(until), process(now))
    items = list(wanted.items())
    claimed: set[str] = set()
    for start in range(0, len(items), _CLAIMS_AT_ONCE):
        part = items[start : start + _CLAIMS_AT_ONCE]
        size, flat = _padded(part, 2)
        result = await conn.exec_driver_sql(_claiming(size), (until_value, *flat, now_value))
        claimed.update(row[0] for row in result.all())
    return claimed


async def stop_cancelled(engine: AsyncEngine, ids: Sequence[str]) -> None:
    """Cancel those of these deliveries that still wait and whose notification is cancelled
    (an attempt that failed after its claim, whose retry its cancellation must stop)."""
    d, n = deliveries, notifications
    cancelled = select(n.c.id).where(
        n.c.id == d.c.notification_id, n.c.status == NotificationStatus.CANCELLED
    )
    async with write_tx(engine) as conn:
        for part in chunks(list(ids), 1000):
            await stop_waiting(conn, and_(d.c.id.in_(part), exists(cancelled)), utcnow())


async def stop_waiting(
    conn: AsyncConnection, which: ColumnElement[bool], now: datetime
) -> list[tuple[str, str]]:
    """Cancel the deliveries ``which`` selects that still wait and are not in flight, each
    with its ``cancelled`` event; the (id, tenant) of those cancelled.

    Each is first marked in ``delivery_claims`` (``cancelled``), which no claim takes after
    it: a claim being written at the same moment holds the row's key until it commits, so
    the mark either waits for it and leaves the delivery to its call, or comes first and
    the claim finds the mark. So no delivery is both cancelled and sent."""
    d, k = deliveries, delivery_claims
    found = (
        await conn.execute(select(d.c.id, d.c.attempts).where(which, d.c.status.in_(WAITING)))
    ).all()
    marked: list[str] = []
    for part in chunks(list(found), 1000):
        stmt: Any = postgresql.insert(k) if conn.dialect.name == "postgresql" else sqlite.insert(k)
        # A live claim ahead of the stored attempts is a call in flight: left alone.
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={"cancelled": True, "leased_until": stmt.excluded.leased_until},
            where=(k.c.attempt <= stmt.excluded.attempt) | (k.c.leased_until < db_now()),
        ).returning(k.c.id)
        rows = [
            {"id": did, "attempt": attempts, "leased_until": now, "cancelled": True}
            for did, attempts in part
        ]
        marked.extend((await conn.execute(stmt, rows)).scalars())
    stopped: list[tuple[str, str]] = []
    for ids in chunks(marked, 1000):
        result = await conn.execute(
            update(d)
            .where(d.c.id.in_(ids), d.c.status.in_(WAITING))
            .values(
                status=DeliveryStatus.CANCELLED,
                reason="cancelled",
                scheduled_for=None,
                updated_at=now,
                watched_since=None,
            )
            .returning(d.c.id, d.c.tenant_id)
        )
        stopped.extend((did, tenant) for did, tenant in result.all())
    events = [
        {
            "delivery_id": did,
            "tenant_id": tenant,
            "status": DeliveryStatus.CANCELLED,
            "detail": "cancelled",
            "created_at": now,
        }
        for did, tenant in stopped
    ]
    for chunk in chunks(events, 1000):
        await conn.execute(delivery_events.insert(), chunk)
    return stopped


async def apply_changes(
    engine: AsyncEngine, changes: Sequence[StatusChange], pg: PgPool | None = None
) -> None:
    """Write a batch of status changes and their events atomically (on PostgreSQL through
    its pool of hot statements, ``pg``)."""
    if not changes:
        return
    now = utcnow()
    changes = [c.bound() for c in changes]
    if pg is not None:
        await _apply_set_based(pg, changes, now)
        return
    if engine.dialect.name != "sqlite":
        raise ValueError("status changes on PostgreSQL are written through its pool (pg)")
    async with write_tx(engine) as conn:
        await _apply_sqlite(conn, changes, now)


def _has_event(change: StatusChange) -> bool:
    """Whether a change is stored as an event row. A plain `sent` is not: the row's status
    and `sent_at` tell it, and the timeline shows it from them (store/message_log.py), so
    the commonest change writes one row, not two."""
    return change.status != DeliveryStatus.SENT or bool(change.last_error or change.reason)


# The columns a status change sets, in the order of a row of ``_CHANGED`` after its id.
CHANGE_COLUMNS = (
    "status",
    "attempts",
    "reason",
    "last_error",
    "provider_message_id",
    "scheduled_for",
    "sent_at",
    "provider",
    "latency_ms",
)
_ROW = "(" + ", ".join(["?"] * (len(CHANGE_COLUMNS) + 1)) + ")"
# Rows per statement at most.
_CHANGES_AT_ONCE = 256


def _latest(changes: Sequence[StatusChange]) -> list[tuple[Any, ...]]:
    """One row per delivery, its id and then ``CHANGE_COLUMNS``: of two changes to the
    same delivery in a batch, the later is its state (as one after the other would leave
    it); both are events."""
    latest = {
        c.delivery_id: (
            c.delivery_id,
            c.status,
            c.attempts,
            c.reason,
            c.last_error,
            c.provider_message_id,
            c.scheduled_for,
            c.sent_at,
            c.provider,
            c.latency_ms,
        )
        for c in changes
    }
    return list(latest.values())


@functools.cache
def _changed(rows: int) -> str:
    """SQLite's status update of ``rows`` deliveries in one statement: ``updated_at``, then
    a row of (id, the columns) per delivery. A provider's report that the message was
    delivered may arrive before the worker has stored its own outcome of the send: the
    report is the later truth. An outcome never overwrites one of a later attempt (a retry
    may store its outcome first). A cancelled delivery stays cancelled: a cancellation
    leaves a delivery in flight alone (:func:`stop_waiting`), so only an attempt whose claim
    lapsed meets one. (PostgreSQL: ``bulk.write_changes``.)"""
    values = ", ".join([_ROW] * rows)
    column = {name: f"v.column{i + 2}" for i, name in enumerate(CHANGE_COLUMNS)}
    sets = ", ".join(f"{name} = {column[name]}" for name in CHANGE_COLUMNS if name != "provider")
    return (
        f"UPDATE deliveries SET {sets}, updated_at = ?, "
        f"provider = coalesce({column['provider']}, deliveries.provider), "
        f"watched_since = CASE WHEN {column['status']} IN {bulk.WAITING_SQL} "
        "THEN deliveries.watched_since END "
        f"FROM (VALUES {values}) AS v WHERE deliveries.id = v.column1 "
        f"AND deliveries.status NOT IN ('{DeliveryStatus.DELIVERED.value}', "
        f"'{DeliveryStatus.CANCELLED.value}') AND deliveries.attempts <= {column['attempts']}"
    )


async def _apply_sqlite(
    conn: AsyncConnection, changes: Sequence[StatusChange], now: datetime
) -> None:
    """SQLite: the changes in statements of many rows each, one row per delivery (of two
    changes to the same delivery in a batch the later is its state, as on PostgreSQL);
    each change with an event. As ``executemany``, SQLite's driver would take each row in
    a turn of its own, and each turn waited for the busy event loop's thread
    (store/sqlite_driver.py)."""
    dialect = conn.dialect
    stored = [
        deliveries.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        for name in CHANGE_COLUMNS
    ]
    rows = [
        (
            row[0],
            *(
                value if process is None or value is None else process(value)
                for value, process in zip(row[1:], stored, strict=True)
            ),
        )
        for row in _latest(changes)
    ]
    at_process = deliveries.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
    at = now if at_process is None else at_process(now)
    for start in range(0, len(rows), _CHANGES_AT_ONCE):
        part = rows[start : start + _CHANGES_AT_ONCE]
        size, flat = _padded(part, len(CHANGE_COLUMNS) + 1)
        # ``updated_at`` is the statement's first parameter (in SET, before FROM).
        await conn.exec_driver_sql(_changed(size), (at, *flat))
    events = [
        {
            "delivery_id": c.delivery_id,
            "tenant_id": c.tenant_id,
            "status": c.status,
            "detail": c.last_error or c.reason,
            "created_at": now,
            "attempt": c.attempt,
            "provider": c.provider,
            "latency_ms": c.latency_ms,
            "error_class": c.error_class,
            "reason": c.reason or c.retry_reason,
        }
        for c in changes
        if _has_event(c)
    ]
    await execute_many(conn, _EVENTS, events)


async def _apply_set_based(pg: PgPool, changes: Sequence[StatusChange], now: datetime) -> None:
    events = [
        (
            c.delivery_id,
            c.tenant_id,
            c.status,
            c.last_error or c.reason,
            c.attempt,
            c.provider,
            c.latency_ms,
            c.error_class,
            c.reason or c.retry_reason,
        )
        for c in changes
        if _has_event(c)
    ]
    await bulk.write_changes(pg, _latest(changes), events, now)


def with_trace() -> Select[Any]:
    """Delivery rows with their notification's stored traceparent (``trace``), for what
    publishes them again: a joined lookup by primary key, off the hot path."""
    n = notifications
    return select(deliveries, n.c.trace).select_from(
        deliveries.outerjoin(n, n.c.id == deliveries.c.notification_id)
    )


async def touch(engine: AsyncEngine, ids: Sequence[str]) -> None:
    """Mark deliveries as handled just now (the sweeper re-published them): watched from
    now, stale again only ``sweep_after`` from now (store/sweeps.py)."""
    now = utcnow()
    async with write_tx(engine) as conn:
        for part in chunks(list(ids), 1000):
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(part))
                .values(updated_at=now, watched_since=now)
            )


async def release_claims(engine: AsyncEngine, items: Sequence[tuple[str, int]]) -> None:
    """End the leases of these attempts (delivery id, attempt): their worker stopped and
    handed their messages back unanswered, so whoever takes a message again may claim the
    same attempt at once rather than after the lease. An attempt whose outcome is stored
    meanwhile, or that a later one has followed, is left alone."""
    k = delivery_claims
    async with write_tx(engine) as conn:
        for part in chunks(list(items), 500):
            await conn.execute(
                update(k)
                .where(~k.c.cancelled, tuple_(k.c.id, k.c.attempt).in_(part))
                .values(leased_until=utcnow())
            )


async def release_leases(engine: AsyncEngine) -> None:
    """End every attempt's lease: after a crash of the one process an embedded broker lives
    in, no worker holds one any more."""
    k = delivery_claims
    now = utcnow()
    async with write_tx(engine) as conn:
        await conn.execute(
            update(k).where(~k.c.cancelled, k.c.leased_until > now).values(leased_until=now)
        )


async def all_queued(engine: AsyncEngine, after: str | None, limit: int) -> list[Stored]:
    """Every waiting delivery (those being sent too), in id order, a page at a time
    (embedded recovery)."""
    query = with_trace().where(deliveries.c.status.in_(WAITING))
    if after:
        query = query.where(deliveries.c.id > after)
    query = query.order_by(deliveries.c.id).limit(limit)
    async with engine.connect() as conn:
        return [delivery_rows.stored_of(row) for row in (await conn.execute(query)).mappings()]


async def apply_provider_report(
    engine: AsyncEngine,
    tenant_id: str,
    delivery_id: str,
    status: str,
    *,
    reason: str | None = None,
    last_error: str | None = None,
    message_id: str | None = None,
) -> bool:
    """Record what a provider later reported about a sent delivery (``delivered`` or
    ``failed``), with its event. Only a delivery that is ``queued`` (the report came before
    the worker stored the send's outcome) or ``sent`` changes, so a late or
    repeated report never moves a delivery backwards or revives a finished one; with
    ``message_id``, only a delivery whose provider message id is that one (or not stored
    yet). Returns whether it changed."""
    now = utcnow()
    async with write_tx(engine) as conn:
        return await _reported(
            conn, tenant_id, delivery_id, status, reason, last_error, message_id, now
        )


async def _reported(
    conn: AsyncConnection,
    tenant_id: str,
    delivery_id: str,
    status: str,
    reason: str | None,
    last_error: str | None,
    message_id: str | None,
    now: datetime,
) -> bool:
    where = [
        deliveries.c.id == delivery_id,
        deliveries.c.tenant_id == tenant_id,
        deliveries.c.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.SENT]),
    ]
    if message_id is not None:
        where.append(_message_is(message_id))
    result = await conn.execute(
        update(deliveries)
        .where(*where)
        .values(
            status=status,
            reason=reason,
            last_error=last_error,
            updated_at=now,
            watched_since=None,
        )
    )
    if result.rowcount == 0:
        return False
    await conn.execute(
        delivery_events.insert().values(
            delivery_id=delivery_id,
            tenant_id=tenant_id,
            status=status,
            detail=last_error or reason,
            created_at=now,
        )
    )
    return True


def _message_is(message_id: str) -> ColumnElement[bool]:
    column = deliveries.c.provider_message_id
    return column.is_(None) | (column == message_id)


async def apply_read_report(
    engine: AsyncEngine, tenant_id: str, delivery_id: str, *, message_id: str | None = None
) -> tuple[bool, bool]:
    """Record that the recipient read a sent delivery: its ``read`` event, once, on the
    timeline; a delivery still ``sent`` (or ``queued``) becomes ``delivered`` first, as
    reading implies (the services may report the two in either order, or only the read).
    A failed or unsent delivery changes nothing. Returns (whether it became delivered,
    whether the read was recorded)."""
    now = utcnow()
    async with write_tx(engine) as conn:
        delivered = await _reported(
            conn, tenant_id, delivery_id, DeliveryStatus.DELIVERED, None, None, message_id, now
        )
        where = [
            deliveries.c.id == delivery_id,
            deliveries.c.tenant_id == tenant_id,
            deliveries.c.status == DeliveryStatus.DELIVERED,
        ]
        if message_id is not None:
            where.append(_message_is(message_id))
        # Locked, so two copies of one report record one event.
        query = select(deliveries.c.id).where(*where).with_for_update()
        found = (await conn.execute(query)).first()
        if found is None:
            return delivered, False
        seen = exists().where(
            delivery_events.c.delivery_id == delivery_id,
            delivery_events.c.tenant_id == tenant_id,
            delivery_events.c.status == READ,
        )
        if (await conn.execute(select(seen))).scalar():
            return delivered, False
        await conn.execute(
            delivery_events.insert().values(
                delivery_id=delivery_id, tenant_id=tenant_id, status=READ, created_at=now
            )
        )
    return delivered, True


async def get_one(engine: AsyncEngine, tenant_id: str, delivery_id: str) -> dict[str, Any] | None:
    query = select(deliveries).where(
        deliveries.c.id == delivery_id, deliveries.c.tenant_id == tenant_id
    )
    row = await first_row(engine, query)
    return dict(row) if row else None


async def insert_one(engine: AsyncEngine, item: Stored, at: datetime) -> bool:
    """Insert one delivery, made ``at``, with its first event unless its id exists; True if
    inserted."""
    row = delivery_rows.row(item, at)
    async with write_tx(engine) as conn:
        result = await conn.execute(insert_ignoring_conflicts(conn, deliveries), [row])
        if not result.rowcount:
            return False
        await conn.execute(
            delivery_events.insert(),
            [
                {
                    "delivery_id": row["id"],
                    "tenant_id": row["tenant_id"],
                    "status": row["status"],
                    "detail": row["reason"],
                    "created_at": at,
                }
            ],
        )
    return True
