"""Status events: what a tenant's webhooks are told when a delivery changes state.

An event is published to the ``events`` stream after the change it reports is committed,
and only for tenants with an enabled webhook that wants its type, so tenants without
webhooks pay one dictionary lookup per batch. A broker failure at that moment loses the
events of that batch (logged): the status in the database is the truth, events are news.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from clarion.domain.delivery import Stored
from clarion.domain.ids import new_id
from clarion.domain.models import DeliveryStatus
from clarion.domain.status import StatusChange
from clarion.pipeline.context import Context
from clarion.store import deliveries as delivery_store
from clarion.store import tracking as tracking_store
from clarion.store.db import as_utc, utcnow

log = logging.getLogger(__name__)

EVENTS_STREAM = "events"
# Events to try again (for one webhook each): a stream of their own, read after the fresh
# events with a bounded share of the dispatcher (pipeline/consumer.py).
EVENTS_RETRY_STREAM = "events.retry"
# The statuses that make an event; an intermediate `queued` (a retry is due) makes none.
EMITTED = frozenset(
    {
        DeliveryStatus.SENT,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.FAILED,
        DeliveryStatus.DEAD,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.SCHEDULED,
    }
)


def rfc3339(value: datetime | None) -> str | None:
    moment = as_utc(value)
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def event(status: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": f"delivery.{status}",
        "created_at": rfc3339(utcnow()),
        "data": data,
    }


def change_data(change: StatusChange) -> dict[str, Any]:
    about = change.delivery
    return {
        "delivery_id": change.delivery_id,
        "notification_id": about.notification if about else None,
        "recipient_id": about.recipient if about else None,
        "channel": about.channel if about else None,
        "provider": change.provider or (about.provider if about else None),
        "provider_message_id": change.provider_message_id,
        "status": change.status,
        "reason": change.reason,
        "attempts": change.attempts,
        "last_error": change.last_error,
        "scheduled_for": rfc3339(change.scheduled_for),
        "sent_at": rfc3339(change.sent_at),
    }


def new_data(item: Stored) -> dict[str, Any]:
    """The data of an event about a new delivery (no attempt made yet)."""
    d = item.delivery
    return {
        "delivery_id": d.id,
        "notification_id": d.notification,
        "recipient_id": d.recipient,
        "channel": d.channel,
        "provider": d.provider,
        "provider_message_id": None,
        "status": item.status,
        "reason": item.reason,
        "attempts": d.attempt - 1,
        "last_error": item.last_error,
        "scheduled_for": rfc3339(item.scheduled_for),
        "sent_at": None,
    }


def row_data(row: dict[str, Any]) -> dict[str, Any]:
    """The data of an event about a delivery row as stored."""
    return {
        "delivery_id": row["id"],
        "notification_id": row["notification_id"],
        "recipient_id": row["recipient_id"],
        "channel": row["channel"],
        "provider": row["provider"],
        "provider_message_id": row["provider_message_id"],
        "status": row["status"],
        "reason": row["reason"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "scheduled_for": rfc3339(row["scheduled_for"]),
        "sent_at": rfc3339(row["sent_at"]),
    }


def message(tenant_id: str, evt: dict[str, Any], trace: str | None = None) -> dict[str, Any]:
    """The ``events`` stream's message: the event and whose it is; with tracing on, the
    traceparent of the attempt that made it (an optional field)."""
    found = {"tenant": tenant_id, "event": evt, "attempt": 1}
    if trace is not None:
        found["traceparent"] = trace
    return found


class StatusEvents:
    """Turns status changes and new delivery rows into event messages and publishes them."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def _subscribed(self, tenant_ids: Iterable[str]) -> None:
        await self._ctx.webhooks.prepare(tenant_ids)

    async def of_changes(self, changes: Sequence[StatusChange]) -> list[dict[str, Any]]:
        """The messages for a batch of changes (to publish once it is committed)."""
        emitted = [c for c in changes if c.status in EMITTED]
        if not emitted:
            return []
        await self._subscribed({c.tenant_id for c in emitted})
        wants = self._ctx.webhooks.wants
        return [
            message(c.tenant_id, event(c.status, change_data(c)), c.trace)
            for c in emitted
            if wants(c.tenant_id, f"delivery.{c.status}")
        ]

    async def of_new(self, items: Sequence[Stored]) -> list[dict[str, Any]]:
        """The messages for newly inserted deliveries (only their final or deferred states
        make events; a queued delivery's event comes from its worker)."""
        emitted = [item for item in items if item.status in EMITTED]
        if not emitted:
            return []
        await self._subscribed({item.delivery.tenant for item in emitted})
        wants = self._ctx.webhooks.wants
        return [
            message(item.delivery.tenant, event(item.status, new_data(item)))
            for item in emitted
            if wants(item.delivery.tenant, f"delivery.{item.status}")
        ]

    async def publish(self, messages: list[dict[str, Any]]) -> None:
        """Publish committed changes' events in one call; a failure is logged, not raised,
        since what they report is stored already."""
        if not messages:
            return
        try:
            await self._ctx.broker.publish(EVENTS_STREAM, messages)
        except Exception as exc:
            log.warning("%d status event(s) could not be published: %r", len(messages), exc)

    async def emit_new(self, items: Sequence[Stored]) -> None:
        """Publish the events of new deliveries already committed; failures are logged."""
        try:
            messages = await self.of_new(items)
        except Exception as exc:
            log.warning("status events of %d deliveries were not published: %r", len(items), exc)
            return
        await self.publish(messages)

    async def emit_tracked(
        self, tenant_id: str, delivery_id: str, kind: str, event_id: int, url: str | None
    ) -> None:
        """Publish ``delivery.opened`` or ``delivery.clicked`` (``kind``) for an open or a
        click already recorded (store/tracking.py): the delivery as it is, ``first`` (the
        delivery's first of its kind) and a click's ``url``. Read only when a webhook wants
        it; a failure is logged, not raised."""
        try:
            await self._subscribed([tenant_id])
            if not self._ctx.webhooks.wants(tenant_id, f"delivery.{kind}"):
                return
            row = await delivery_store.get_one(self._ctx.engine, tenant_id, delivery_id)
            first = await tracking_store.is_first(self._ctx.engine, delivery_id, kind, event_id)
        except Exception as exc:
            log.warning("delivery %s: its %s event was not published: %r", delivery_id, kind, exc)
            return
        if row is not None:
            data = {**row_data(row), "first": first}
            if url is not None:
                data["url"] = url
            await self.publish([message(tenant_id, event(kind, data))])

    async def emit_report(self, tenant_id: str, delivery_id: str, status: str) -> None:
        """Publish the event of a provider's report, already committed, about a delivery."""
        try:
            await self._subscribed([tenant_id])
            if not self._ctx.webhooks.wants(tenant_id, f"delivery.{status}"):
                return
            row = await delivery_store.get_one(self._ctx.engine, tenant_id, delivery_id)
        except Exception as exc:
            log.warning("delivery %s: its status event was not published: %r", delivery_id, exc)
            return
        if row is not None:
            await self.publish([message(tenant_id, event(row["status"], row_data(row)))])
