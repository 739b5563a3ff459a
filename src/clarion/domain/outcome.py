"""A notification's aggregate status, from its deliveries' statuses (computed when read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clarion.domain.models import TERMINAL_STATUSES, DeliveryStatus, NotificationStatus

FAILURES = frozenset({DeliveryStatus.FAILED, DeliveryStatus.DEAD})
SUCCESSES = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED})


def aggregate_status(stored: str, totals: Mapping[str, int]) -> str:
    """The status the API shows: the stored one until the notification is planned; once
    planned (stored ``processing``), ``processing`` while any delivery is unfinished, then
    ``completed`` when none failed (each sent, delivered or deliberately suppressed),
    ``failed`` when some failed and none succeeded, ``partial`` for a mix.

    A cancelled notification reads ``cancelling`` while deliveries claimed before the
    cancellation are being sent (``sending``): until then something may still go out.

    ``totals`` counts deliveries per status (statuses with no delivery may be absent)."""
    if stored == NotificationStatus.CANCELLED and totals.get(DeliveryStatus.SENDING):
        return NotificationStatus.CANCELLING
    if stored != NotificationStatus.PROCESSING:
        return stored
    present = {status for status, count in totals.items() if count}
    if present - TERMINAL_STATUSES:
        return NotificationStatus.PROCESSING
    if not present & FAILURES:
        return NotificationStatus.COMPLETED
    if present & SUCCESSES:
        return NotificationStatus.PARTIAL
    return NotificationStatus.FAILED


def shown_status(row: Mapping[Any, Any], totals: Mapping[str, int]) -> str:
    """:func:`aggregate_status` of a stored notification row; a topic send stays
    ``processing`` until every chunk of its subscribers is planned."""
    if row.get("topic") is not None and row.get("planned_at") is None:
        return str(row["status"])
    return aggregate_status(row["status"], totals)


def shown_to(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored notification's ``to``, as the request gave it."""
    if row.get("topic") is not None:
        return {"topic": row["topic"]}
    return {"recipient_ids": row["recipient_ids"]}


def cancellation(stored: str, totals: Mapping[str, int]) -> dict[str, int] | None:
    """For a cancelled notification, what its cancellation made of the deliveries: how many
    were cancelled, and how many claimed before it are still in flight (they may go out);
    None for one not cancelled."""
    if stored != NotificationStatus.CANCELLED:
        return None
    return {
        "cancelled": totals.get(DeliveryStatus.CANCELLED, 0),
        "in_flight": totals.get(DeliveryStatus.SENDING, 0),
    }
