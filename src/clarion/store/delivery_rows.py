"""The deliveries table's row of a delivery, and the delivery of a row: the store's one
mapping between :class:`~clarion.domain.delivery.Delivery` (with its state,
:class:`~clarion.domain.delivery.Stored`) and the columns.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from clarion.domain.delivery import Delivery, Stored
from clarion.store.db import as_utc

# The columns a new delivery is inserted with, in the order of :func:`values`.
COLUMNS = (
    "id",
    "notification_id",
    "tenant_id",
    "recipient_id",
    "channel",
    "provider",
    "priority",
    "status",
    "reason",
    "attempts",
    "last_error",
    "address",
    "content",
    "provider_message_id",
    "category",
    "critical",
    "fallback",
    "scheduled_for",
    "expires_at",
    "created_at",
    "updated_at",
    "sent_at",
)

_TRACEPARENT_LENGTH = 55


@functools.lru_cache(maxsize=1024)
def _moment(timestamp: float) -> datetime:
    # Cached: the deliveries of one notification share their deadline.
    return datetime.fromtimestamp(timestamp, UTC)


def values(item: Stored, at: datetime) -> tuple[Any, ...]:
    """A new delivery's column values, in the order of :data:`COLUMNS`; made (and last
    updated) ``at``, no attempt made yet."""
    d = item.delivery
    expires_at = None if d.expires_at is None else _moment(d.expires_at)
    return (
        d.id,
        d.notification,
        d.tenant,
        d.recipient,
        d.channel,
        d.provider,
        d.priority,
        item.status,
        item.reason,
        d.attempt - 1,
        item.last_error,
        d.to,
        d.content,
        None,
        d.category,
        d.critical,
        d.fallback,
        item.scheduled_for,
        expires_at,
        at,
        at,
        None,
    )


def row(item: Stored, at: datetime) -> dict[str, Any]:
    """A new delivery's row, by column name."""
    return dict(zip(COLUMNS, values(item, at), strict=True))


def _timestamp(value: datetime | None) -> float | None:
    moment = as_utc(value)
    return None if moment is None else moment.timestamp()


def _traceparent(value: Any) -> str | None:
    """An optional field: anything but a string of a traceparent's length is ignored."""
    return value if isinstance(value, str) and len(value) == _TRACEPARENT_LENGTH else None


def delivery_of(row: Mapping[Any, Any], attempt: int | None = None) -> Delivery:
    """The delivery of a stored row; by default it asks for the try after the row's (the
    attempts its outcomes counted): an attempt claimed by a worker that died is made again,
    and counted once, by its outcome."""
    if attempt is None:
        attempt = row["attempts"] + 1
    return Delivery(
        id=row["id"],
        tenant=row["tenant_id"],
        notification=row["notification_id"],
        recipient=row["recipient_id"],
        channel=row["channel"],
        provider=row["provider"],
        priority=row["priority"],
        to=row["address"],
        content=row["content"],
        attempt=attempt,
        expires_at=_timestamp(row.get("expires_at")),
        category=row.get("category"),
        critical=bool(row.get("critical")),
        fallback=row.get("fallback"),
        # A row read with its notification's stored traceparent (deliveries.py).
        trace=_traceparent(row.get("trace")),
    )


def stored_of(row: Mapping[Any, Any]) -> Stored:
    """A stored row's delivery (:func:`delivery_of`) with its state."""
    return Stored(
        delivery_of(row),
        row["status"],
        row["reason"],
        as_utc(row["scheduled_for"]),
        row["last_error"],
    )
