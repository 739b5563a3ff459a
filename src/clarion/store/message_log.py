"""The message log: notifications and deliveries, newest first, filtered, a page at a time.

Each list walks an index backwards from a keyset cursor (``created_at, id`` of the last row
shown), so a page costs a page however large the tables are: notifications' ``(tenant_id[,
status | template], created_at, id)``, deliveries' ``(tenant_id[, recipient_id],
created_at, id)``. A notification's aggregate status is computed here, at read time, from
its deliveries' statuses (one grouped query per page over
``ix_deliveries_notification_id``): the hot path writes nothing per delivery for it.

No index holds a delivery's status (migration 0038), nor its channel, provider, reason,
category or template, so a delivery list filtered by any of them walks the tenant's
deliveries newest first and keeps those that match. That walk stops after
:data:`SCAN_LIMIT` deliveries: a page may then hold fewer rows than asked for, even none,
and the next one starts after the last delivery examined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.models import TERMINAL_STATUSES, DeliveryStatus, NotificationStatus
from clarion.domain.outcome import FAILURES, SUCCESSES
from clarion.store import send_totals, tracking
from clarion.store.db import as_utc
from clarion.store.deliveries import WAITING, in_flight, select_deliveries
from clarion.store.notifications import (
    delivery_to_public,
    notification_summary,
    select_notifications,
    waiting,
)
from clarion.store.pages import Position, between, bounded_walk, newest_first, page_of
from clarion.store.tables import deliveries, delivery_events, notifications, template_versions

_UNPLANNED = (NotificationStatus.ACCEPTED, NotificationStatus.SCHEDULED)
_FAILURES = list(FAILURES)
_SUCCESSES = list(SUCCESSES)
MAX_EVENTS = 1000
# How many of a tenant's deliveries (of its time range, or a recipient's or a
# notification's) one page of a delivery list filtered by what no index holds (status,
# channel, provider, reason, category, template, event) examines at most. A rare value
# would otherwise walk the tenant's whole history on every request: seconds over millions
# of rows, a database connection held all that time. A walk of 10,000 took 10-15 ms on
# PostgreSQL and 25-50 ms on SQLite (200,000 deliveries, all in memory).
SCAN_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class TimeRange:
    after: datetime | None = None  # created_at >= after
    before: datetime | None = None  # created_at < before


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What both lists filter by: each list's own status, the template, the recipient,
    the category and when the row was created."""

    status: str | None = None
    template: str | None = None
    recipient_id: str | None = None
    category: str | None = None
    created: TimeRange = TimeRange()


@dataclass(frozen=True, slots=True)
class NotificationFilter(LogFilter):
    """The notification list's: a notification's status (``accepted``, ``partial``...)."""


@dataclass(frozen=True, slots=True)
class DeliveryFilter(LogFilter):
    """The delivery list's: a delivery's status, and what only a delivery has."""

    channel: str | None = None
    provider: str | None = None
    reason: str | None = None
    notification_id: str | None = None
    # Deliveries with at least one event of this type: ``opened`` or ``clicked``.
    event: str | None = None


Predicate = Callable[[Any], ColumnElement[bool]]


def _d_exists(predicate: Predicate) -> ColumnElement[bool]:
    """Whether the notification has a delivery matching ``predicate`` (on an alias)."""
    d = deliveries.alias("d_agg")
    return exists().where(d.c.notification_id == notifications.c.id, predicate(d))


def _status_condition(status: str) -> ColumnElement[bool]:
    """The stored-status condition that selects notifications whose aggregate status is
    ``status`` (see :func:`aggregate_status`)."""
    n = notifications

    def pending(d: Any) -> ColumnElement[bool]:
        column: ColumnElement[str] = d.c.status
        return column.not_in(list(TERMINAL_STATUSES))

    def failure(d: Any) -> ColumnElement[bool]:
        column: ColumnElement[str] = d.c.status
        return column.in_(_FAILURES)

    def success(d: Any) -> ColumnElement[bool]:
        column: ColumnElement[str] = d.c.status
        return column.in_(_SUCCESSES)

    def sending(d: Any) -> ColumnElement[bool]:
        return in_flight(d)

    cancelled = n.c.status == NotificationStatus.CANCELLED
    if status == NotificationStatus.CANCELLING:
        return and_(cancelled, _d_exists(sending))
    if status == NotificationStatus.CANCELLED:
        return and_(cancelled, ~_d_exists(sending))
    # Stored `processing`, or `accepted`/`scheduled` and planned (store/notifications.py
    # ``planned_status``).
    processing = or_(
        n.c.status == NotificationStatus.PROCESSING,
        and_(n.c.status.in_(_UNPLANNED), ~waiting()),
    )
    finished = and_(processing, ~_d_exists(pending))
    if status == NotificationStatus.PROCESSING:
        return and_(processing, _d_exists(pending))
    if status == NotificationStatus.COMPLETED:
        return and_(finished, ~_d_exists(failure))
    if status == NotificationStatus.PARTIAL:
        return and_(finished, _d_exists(failure), _d_exists(success))
    if status == NotificationStatus.FAILED:
        return or_(
            n.c.status == NotificationStatus.FAILED,
            and_(finished, _d_exists(failure), ~_d_exists(success)),
        )
    if status in _UNPLANNED:
        return and_(n.c.status == status, waiting())
    return n.c.status == status


def _templates_of_category(tenant_id: str, category: str) -> Any:
    v = template_versions
    return (
        select(v.c.name)
        .where(v.c.tenant_id == tenant_id, v.c.category == category)
        .distinct()
        .scalar_subquery()
    )


def _listed(tenant_id: str, table: Any, created: TimeRange) -> list[ColumnElement[bool]]:
    """The tenant's rows of ``table`` created in the range."""
    return [
        table.c.tenant_id == tenant_id,
        *between(table.c.created_at, created.after, created.before),
    ]


def notifications_query(
    tenant_id: str, where: NotificationFilter, after: Position | None, limit: int
) -> Select[Any]:
    n = notifications
    conditions = _listed(tenant_id, n, where.created)
    if where.status is not None:
        conditions.append(_status_condition(where.status))
    if where.template is not None:
        conditions.append(n.c.template == where.template)
    if where.category is not None:
        conditions.append(n.c.template.in_(_templates_of_category(tenant_id, where.category)))
    if where.recipient_id is not None:
        d = deliveries
        conditions.append(
            n.c.id.in_(
                select(d.c.notification_id).where(
                    d.c.tenant_id == tenant_id, d.c.recipient_id == where.recipient_id
                )
            )
        )
    query = select_notifications().where(*conditions)
    return newest_first(query, n.c.created_at, n.c.id, after, limit)


async def list_notifications(
    engine: AsyncEngine,
    tenant_id: str,
    where: NotificationFilter,
    after: Position | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` notifications, newest first, each with its delivery totals."""
    rows = await _rows(engine, notifications_query(tenant_id, where, after, limit))
    # A large send's as counted a moment ago (store/send_totals.py).
    totals = await send_totals.totals(engine, [r["id"] for r in rows])
    return [notification_summary(row, totals[row["id"]]) for row in rows]


async def _rows(engine: AsyncEngine, query: Select[Any]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


def deliveries_query(
    tenant_id: str, where: DeliveryFilter, after: Position | None, limit: int
) -> Select[Any]:
    """Up to ``limit`` of the tenant's deliveries after ``after``, newest first. Filtered by
    what no index holds (a status, channel, provider, reason, category, template or event),
    which a rare value would otherwise make a read of the tenant's whole history, the rows
    of :func:`_examined` (a bounded walk)."""
    d = deliveries
    # What the walk's index holds: the tenant and the time (the recipient's index with a
    # recipient), or a notification's deliveries.
    ranged = _listed(tenant_id, d, where.created)
    for column, value in (
        (d.c.recipient_id, where.recipient_id),
        (d.c.notification_id, where.notification_id),
    ):
        if value is not None:
            ranged.append(column == value)
    # What each row of that range is checked for.
    checked: list[ColumnElement[bool]] = []
    for column, value in (
        (d.c.channel, where.channel),
        (d.c.provider, where.provider),
        (d.c.reason, where.reason),
        (d.c.category, where.category),
    ):
        if value is not None:
            checked.append(column == value)
    if where.template is not None:
        n = notifications
        checked.append(
            d.c.notification_id.in_(
                select(n.c.id).where(n.c.tenant_id == tenant_id, n.c.template == where.template)
            )
        )
    if where.event is not None:
        e = delivery_events
        checked.append(
            exists().where(
                e.c.delivery_id == d.c.id, e.c.tenant_id == tenant_id, e.c.status == where.event
            )
        )
    if where.status is not None:
        checked.append(_delivery_status(where.status))
    if checked:
        return _examined(ranged, and_(*checked), after, limit)
    return newest_first(select_deliveries().where(*ranged), d.c.created_at, d.c.id, after, limit)


def _examined(
    conditions: Sequence[ColumnElement[bool]],
    matches: ColumnElement[bool],
    after: Position | None,
    limit: int,
) -> Select[Any]:
    """Of the next :data:`SCAN_LIMIT` deliveries after ``after`` that ``conditions`` keep
    (an index's range), newest first: those that ``matches`` keeps (``matched``), the last
    one examined (``walk_end``) and the one after it (``walk_goes_on``: more is left to
    examine). At most ``limit + 1`` rows: ``limit`` matches fill the caller's page and its
    row more, and fewer come with those last two rows (store/pages.py ``bounded_walk``):
    the walk is a range of the tenant's time index (or a recipient's) read backwards from
    ``after``. Only the rows kept are read whole (by id)."""
    d = deliveries
    walk = select(d.c.id, d.c.created_at, matches.label("matched")).where(*conditions)
    kept = bounded_walk(walk, d.c.created_at, d.c.id, after, limit, SCAN_LIMIT)
    return (
        select_deliveries()
        .add_columns(kept.c.matched, kept.c.walk_end, kept.c.walk_goes_on)
        .select_from(kept.join(d, d.c.id == kept.c.id))
        .order_by(kept.c.created_at.desc(), kept.c.id.desc())
    )


def _delivery_status(status: str) -> ColumnElement[bool]:
    """Deliveries whose shown status (store/deliveries.py ``shown_status``) is ``status``:
    ``sending`` is a waiting one in flight."""
    d = deliveries
    if status == DeliveryStatus.SENDING:
        return in_flight(d)
    if status in WAITING:
        return and_(d.c.status == status, ~in_flight(d))
    return d.c.status == status


async def list_deliveries(
    engine: AsyncEngine, tenant_id: str, where: DeliveryFilter, after: Position | None, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """A page of deliveries across notifications, newest first, and where the next page
    starts (None: nothing more to examine).

    Filtered by what no index holds (:func:`deliveries_query`), the page holds the matching
    deliveries among the next
    :data:`SCAN_LIMIT`: fewer than ``limit`` (even none) when the walk stopped at its bound
    first, the next page then starting after the last delivery examined. A full page ends
    at its last row, as an unfiltered one does."""
    found = await _rows(engine, deliveries_query(tenant_id, where, after, limit + 1))
    page, following = page_of(found, limit, _position)
    return [delivery_summary(row) for row in page], following


def _position(row: Mapping[str, Any]) -> Position:
    stamp = as_utc(row["created_at"])
    assert stamp is not None
    return Position(stamp, row["id"])


def delivery_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **delivery_to_public(row),
        "notification_id": row["notification_id"],
        "category": row["category"],
        "priority": row["priority"],
    }


async def get_delivery(
    engine: AsyncEngine, tenant_id: str, delivery_id: str
) -> dict[str, Any] | None:
    """One delivery of this tenant with its timeline, or None."""
    d, e = deliveries, delivery_events
    async with engine.connect() as conn:
        query = select_deliveries().where(d.c.id == delivery_id, d.c.tenant_id == tenant_id)
        found = (await conn.execute(query)).mappings().first()
        if found is None:
            return None
        row = dict(found)
        events = (
            await conn.execute(
                select(
                    e.c.status,
                    e.c.detail,
                    e.c.created_at,
                    e.c.attempt,
                    e.c.provider,
                    e.c.latency_ms,
                    e.c.error_class,
                    e.c.reason,
                )
                .where(e.c.delivery_id == delivery_id, e.c.tenant_id == tenant_id)
                .order_by(e.c.id)
                .limit(MAX_EVENTS)
            )
        ).all()
    rows = [EventRow(s, detail, as_utc(at), *rest) for s, detail, at, *rest in events]
    engagement = tracking.summary([(r.status, r.at) for r in rows])
    return {**delivery_summary(row), "tracking": engagement, "events": timeline(row, rows)}


@dataclass(frozen=True, slots=True)
class EventRow:
    """A stored delivery event. ``attempt`` is set when it is the outcome of an attempt
    (with the provider, the call's latency and the error's class); ``reason`` is stored on
    its own since those columns exist (before, ``detail`` held the error or the reason)."""

    status: str
    detail: str | None
    at: datetime | None
    attempt: int | None = None
    provider: str | None = None
    latency_ms: int | None = None
    error_class: str | None = None
    reason: str | None = None


_TYPES = {
    DeliveryStatus.QUEUED.value: "retry_scheduled",
    DeliveryStatus.SCHEDULED.value: "scheduled",
    "replayed": "replayed",
}
_OUTCOMES = {
    DeliveryStatus.SENT.value: "success",
    DeliveryStatus.DELIVERED.value: "success",
    DeliveryStatus.FAILED.value: "failure",
    DeliveryStatus.DEAD.value: "failure",
    DeliveryStatus.QUEUED.value: "retry",
}


def _with_sent(delivery: Mapping[str, Any], events: Sequence[EventRow]) -> list[EventRow]:
    """The events with the delivery's plain `sent`, which has no row (store/deliveries.py):
    its time is the row's `sent_at`, and its attempt the row's provider, latency and
    attempt count."""
    sent_at = as_utc(delivery["sent_at"]) if delivery.get("sent_at") else None
    if sent_at is None or any(e.status == DeliveryStatus.SENT for e in events):
        return list(events)
    sent = EventRow(
        DeliveryStatus.SENT.value,
        None,
        sent_at,
        attempt=delivery.get("attempts") or None,
        provider=delivery["provider"],
        latency_ms=delivery.get("latency_ms"),
    )
    later = [i for i, e in enumerate(events) if e.at is not None and e.at > sent_at]
    cut = later[0] if later else len(events)
    return [*events[:cut], sent, *events[cut:]]


def timeline(delivery: Mapping[str, Any], events: Sequence[EventRow]) -> list[dict[str, Any]]:
    """The delivery's events, oldest first. Its creation is its ``queued`` event (no row is
    written for it); a delivery created in another state (deferred, suppressed) has that
    state's row at its creation time instead. Each attempt is an ``attempt`` event (its
    provider, outcome, latency and error class) before the state it led to."""
    created = as_utc(delivery["created_at"])
    events = _with_sent(delivery, events)
    out: list[dict[str, Any]] = []
    first_is_creation = bool(events) and events[0].at == created
    if not first_is_creation:
        out.append(_event("queued", created))
    last_failed = max(
        (i for i, e in enumerate(events) if e.status == DeliveryStatus.FAILED), default=-1
    )
    for index, e in enumerate(events):
        if e.status in tracking.TRACKED:
            out.append(_tracked(e))
            continue
        kind = _TYPES.get(e.status, e.status)
        if index == 0 and first_is_creation and e.status == DeliveryStatus.QUEUED:
            kind = "queued"
        elif index == last_failed and delivery["reason"] == "no_healthy_provider":
            kind = "fallback"
        success = e.status in _SUCCESSES
        provider = e.provider or (delivery["provider"] if success else None)
        outcome = _OUTCOMES.get(e.status)
        error, reason = _error_and_reason(e, outcome)
        if e.attempt is not None:
            attempt = _event("attempt", e.at, provider, "success" if success else "failure")
            attempt.update(latency_ms=e.latency_ms, attempt=e.attempt)
            if not success:
                attempt.update(error=error, error_class=e.error_class)
            out.append(attempt)
        out.append(_event(kind, e.at, provider, outcome, error, reason))
    return out


def _tracked(e: EventRow) -> dict[str, Any]:
    """An open or a click (store/tracking.py); a click names the link's target."""
    found = _event(e.status, e.at)
    if e.status == tracking.CLICKED:
        found["url"] = e.detail
    return found


def _error_and_reason(e: EventRow, outcome: str | None) -> tuple[str | None, str | None]:
    if e.reason is not None:
        return (e.detail if e.detail != e.reason else None), e.reason
    # A row without its own reason: `detail` is the error of a failure or a retry, else
    # the reason.
    return (e.detail, None) if outcome in ("failure", "retry") else (None, e.detail)


def _event(
    kind: str,
    at: datetime | None,
    provider: str | None = None,
    outcome: str | None = None,
    error: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "type": kind,
        "at": at,
        "provider": provider,
        "outcome": outcome,
        "latency_ms": None,
        "error": error,
        "error_class": None,
        "reason": reason,
        "attempt": None,
    }
