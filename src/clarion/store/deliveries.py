"""Deliveries and their status events: bulk writes for the planner and the workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.bounded import bounded
from clarion.domain.models import (
    ATTEMPT_OUTCOMES,
    TERMINAL_STATUSES,
    DeliveryStatus,
    NotificationStatus,
)
from clarion.store import bulk
from clarion.store.db import utcnow, write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, insert_ignoring_conflicts
from clarion.store.tables import deliveries, delivery_events, notifications

# Deliveries still to be sent: queued now, or scheduled for later (quiet hours).
WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED)


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """What a status event tells about a delivery besides its new state."""

    notification_id: str
    recipient_id: str
    channel: str
    # The planned provider (a change names the one that took the attempt, if any).
    provider: str | None


MAX_ERROR = 2000
MAX_MESSAGE_ID = 255  # the column's size


@dataclass(slots=True)
class StatusChange:
    """A delivery's new state after an attempt (or a decision not to attempt)."""

    delivery_id: str
    tenant_id: str
    status: str
    attempts: int
    reason: str | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    scheduled_for: datetime | None = None
    sent_at: datetime | None = None
    # The provider that took the attempt (failover may pick another than the planned one).
    provider: str | None = None
    # Set when the change is the outcome of an attempt: its number (stored on the event
    # row, the timeline's `attempt` event), how long the provider call took, and the class
    # of its error (timeout, transient, permanent, internal).
    attempt: int | None = None
    latency_ms: int | None = None
    error_class: str | None = None
    # Why a retry was scheduled (the error's reason): on the event only, the delivery's
    # `reason` stays what the API documents.
    retry_reason: str | None = None
    # Not stored: carried so the status event of this change can be published.
    ref: DeliveryRef | None = None
    # Not stored: the attempt's traceparent, linked from the status write's span (tracing).
    trace: str | None = None

    def bound(self) -> StatusChange:
        """Bound what came from a provider's answer, before it reaches a shared batch."""
        self.last_error = bounded(self.last_error, MAX_ERROR)
        self.provider_message_id = bounded(self.provider_message_id, MAX_MESSAGE_ID)
        return self


async def existing_ids(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for part in chunks(list(ids), 1000):
        query = select(deliveries.c.id).where(deliveries.c.id.in_(part))
        found.update((await conn.execute(query)).scalars())
    return found


async def insert_planned(
    conn: AsyncConnection, rows: list[dict[str, Any]], planned_ids: Sequence[str], at: datetime
) -> set[str]:
    """Insert new deliveries, with an event for each one created in another state than
    ``queued`` (a delivery's creation is its ``queued`` event), and mark their notifications
    planned; none of a notification cancelled meanwhile. The ids inserted.
    (PostgreSQL: ``bulk.store_plan``.)"""
    notes = list({row["notification_id"] for row in rows})
    cancelled: set[str] = set()
    for part in chunks(notes, 1000):
        query = select(notifications.c.id).where(
            notifications.c.id.in_(part), notifications.c.status == NotificationStatus.CANCELLED
        )
        cancelled.update((await conn.execute(query)).scalars())
    rows = [row for row in rows if row["notification_id"] not in cancelled]
    for part in chunks(rows, 1000):
        await conn.execute(insert_ignoring_conflicts(conn, deliveries), part)
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
        await conn.execute(delivery_events.insert(), part)
    for part in chunks(list(planned_ids), 1000):
        await conn.execute(
            update(notifications)
            .where(notifications.c.id.in_(part), notifications.c.status != "cancelled")
            .values(status=NotificationStatus.PROCESSING)
        )
    return {row["id"] for row in rows}


async def queued_of_notifications(
    conn: AsyncConnection, notification_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """Deliveries of these notifications still waiting to be sent (now or later)."""
    found: list[dict[str, Any]] = []
    for part in chunks(list(notification_ids), 1000):
        query = select(deliveries).where(
            deliveries.c.notification_id.in_(part),
            deliveries.c.status.in_(WAITING),
        )
        found.extend(dict(row) for row in (await conn.execute(query)).mappings())
    return found


# By primary key only, the status compared here: with `status = ANY(...)` in the query, a
# planner without fresh statistics may read the status index instead, every row `sent` so
# far, on every take.
_STATUSES = "SELECT id, status FROM deliveries WHERE id = ANY($1::text[])"


async def finished_ids(
    engine: AsyncEngine, ids: Sequence[str], pg: PgPool | None = None
) -> set[str]:
    """Which of these deliveries are already in a final state or cancelled (so must not be
    sent). Asked once per take by every worker: on PostgreSQL one fixed statement."""
    if pg is not None:
        rows = await pg.fetch(_STATUSES, list(ids))
        final = {str(s) for s in TERMINAL_STATUSES}
        return {row[0] for row in rows if row[1] in final}
    found: set[str] = set()
    async with engine.connect() as conn:
        for part in chunks(list(ids), 1000):
            query = select(deliveries.c.id).where(
                deliveries.c.id.in_(part), deliveries.c.status.in_(list(TERMINAL_STATUSES))
            )
            found.update((await conn.execute(query)).scalars())
    return found


_UPDATE = (
    update(deliveries)
    # A provider's report that the message was delivered may arrive before the worker has
    # stored its own outcome of the send: the report is the later truth. An outcome never
    # overwrites one of a later attempt (a retry may store its outcome first).
    .where(
        deliveries.c.id == bindparam("b_id"),
        deliveries.c.status != DeliveryStatus.DELIVERED,
        deliveries.c.attempts <= bindparam("b_attempts"),
        # A cancelled delivery is not queued again; what an attempt made of it is kept.
        or_(
            deliveries.c.status != DeliveryStatus.CANCELLED,
            *(bindparam("b_status") == str(outcome) for outcome in sorted(ATTEMPT_OUTCOMES)),
        ),
    )
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        reason=bindparam("b_reason"),
        last_error=bindparam("b_last_error"),
        provider_message_id=bindparam("b_provider_message_id"),
        scheduled_for=bindparam("b_scheduled_for"),
        sent_at=bindparam("b_sent_at"),
        latency_ms=bindparam("b_latency_ms"),
        updated_at=bindparam("b_updated_at"),
        provider=func.coalesce(bindparam("b_provider", type_=String), deliveries.c.provider),
    )
)


async def apply_changes(
    engine: AsyncEngine, changes: Sequence[StatusChange], pg: PgPool | None = None
) -> None:
    """Write a batch of status changes and their events atomically."""
    if not changes:
        return
    now = utcnow()
    changes = [c.bound() for c in changes]
    if pg is not None:
        await _apply_set_based(pg, changes, now)
        return
    async with write_tx(engine) as conn:
        await _apply_row_by_row(conn, changes, now)


def _has_event(change: StatusChange) -> bool:
    """Whether a change is stored as an event row. A plain `sent` is not: the row's status
    and `sent_at` tell it, and the timeline shows it from them (store/message_log.py), so
    the commonest change writes one row, not two."""
    return change.status != DeliveryStatus.SENT or bool(change.last_error or change.reason)


async def _apply_row_by_row(
    conn: AsyncConnection, changes: Sequence[StatusChange], now: datetime
) -> None:
    params = [
        {
            "b_id": c.delivery_id,
            "b_status": c.status,
            "b_attempts": c.attempts,
            "b_reason": c.reason,
            "b_last_error": c.last_error,
            "b_provider_message_id": c.provider_message_id,
            "b_scheduled_for": c.scheduled_for,
            "b_sent_at": c.sent_at,
            "b_latency_ms": c.latency_ms,
            "b_updated_at": now,
            "b_provider": c.provider,
        }
        for c in changes
    ]
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
    await conn.execute(_UPDATE, params)
    if events:
        await conn.execute(delivery_events.insert(), events)


async def _apply_set_based(pg: PgPool, changes: Sequence[StatusChange], now: datetime) -> None:
    # One UPDATE row per delivery: of two changes to the same delivery in a batch, the
    # later is its state (as executemany would leave it); both are events.
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
    await bulk.apply_changes(pg, list(latest.values()), events, now)


def _with_trace() -> Select[Any]:
    """Delivery rows with their notification's stored traceparent (``trace``), for what
    publishes them again: a joined lookup by primary key, off the hot path."""
    n = notifications
    return select(deliveries, n.c.trace).select_from(
        deliveries.outerjoin(n, n.c.id == deliveries.c.notification_id)
    )


async def stale_queued(
    engine: AsyncEngine, older_than: datetime, limit: int
) -> list[dict[str, Any]]:
    """Deliveries waiting since before ``older_than``: neither changed nor due since then.

    A retry or a deferral due later is the broker's delayed set's to publish; only once it
    has been due for as long as a stale queued delivery is it published again here.
    """
    query = (
        _with_trace()
        .where(
            deliveries.c.status.in_(WAITING),
            deliveries.c.updated_at < older_than,
            (deliveries.c.scheduled_for.is_(None)) | (deliveries.c.scheduled_for < older_than),
        )
        .order_by(deliveries.c.updated_at)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def touch(engine: AsyncEngine, ids: Sequence[str]) -> None:
    """Mark deliveries as handled just now (the sweeper re-published them)."""
    now = utcnow()
    async with write_tx(engine) as conn:
        for part in chunks(list(ids), 1000):
            await conn.execute(
                update(deliveries).where(deliveries.c.id.in_(part)).values(updated_at=now)
            )


async def all_queued(engine: AsyncEngine, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Every waiting delivery, in id order, a page at a time (embedded recovery)."""
    query = _with_trace().where(deliveries.c.status.in_(WAITING))
    if after:
        query = query.where(deliveries.c.id > after)
    query = query.order_by(deliveries.c.id).limit(limit)
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def apply_provider_report(
    engine: AsyncEngine,
    tenant_id: str,
    delivery_id: str,
    status: str,
    *,
    reason: str | None = None,
    last_error: str | None = None,
) -> bool:
    """Record what a provider later reported about a sent delivery (``delivered`` or
    ``failed``), with its event. Only a delivery that is ``queued`` (the report came before
    the worker stored the send's outcome), ``sending`` or ``sent`` changes, so a late or
    repeated report never moves a delivery backwards or revives a finished one. Returns
    whether it changed."""
    now = utcnow()
    async with write_tx(engine) as conn:
        result = await conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id == delivery_id,
                deliveries.c.tenant_id == tenant_id,
                deliveries.c.status.in_(
                    [DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.SENT]
                ),
            )
            .values(status=status, reason=reason, last_error=last_error, updated_at=now)
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


async def get_one(engine: AsyncEngine, tenant_id: str, delivery_id: str) -> dict[str, Any] | None:
    query = select(deliveries).where(
        deliveries.c.id == delivery_id, deliveries.c.tenant_id == tenant_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def insert_one(engine: AsyncEngine, row: dict[str, Any]) -> bool:
    """Insert one delivery with its first event unless its id exists; True if inserted."""
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
                    "created_at": row["created_at"],
                }
            ],
        )
    return True
