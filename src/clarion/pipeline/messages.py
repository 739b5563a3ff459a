"""The messages stages pass through the broker, and the one way deliveries are published."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clarion.broker import Broker, Delayed, Message
from clarion.domain.delivery import Delivery, Stored
from clarion.domain.models import plan_stream
from clarion.observability import tracing
from clarion.pipeline.urgency import URGENT

# Messages per XADD pipeline: bounds one round trip, not what a call may publish.
_PUBLISH_CHUNK = 1000
# Notifications one plan message may carry: those of one tenant, priority and trace that
# were stored together share a message (docs/architecture.md, the flow's intake). A
# message's cost to publish, take and ack is then shared; the cap keeps a plan batch,
# whose size the planner asks for in messages, near the notifications it means.
PLAN_GROUP = 25


def plan_payload(
    notification_id: str, tenant_id: str, trace: str | None = None, priority: str | None = None
) -> dict[str, Any]:
    payload = {"notification": notification_id, "tenant": tenant_id}
    if trace is not None:  # tracing on: the W3C traceparent of the notification's trace
        payload["traceparent"] = trace
    if priority in URGENT:  # its planning is urgent work (pipeline/urgency.py)
        payload["priority"] = priority
    return payload


def plan_messages(
    notifications: Iterable[tuple[str, str, str | None, str | None]],
) -> dict[str, list[dict[str, Any]]]:
    """The plan messages of notifications stored together (id, tenant, trace, priority),
    by stream: each carries up to ``PLAN_GROUP`` of one tenant, priority and trace, the
    first as ``notification`` and the rest as ``more``."""
    groups: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
    streams: dict[str, list[dict[str, Any]]] = {}
    for nid, tenant, trace, priority in notifications:
        key = (tenant, trace, priority)
        payload = groups.get(key)
        if payload is not None:
            more: list[str] = payload.setdefault("more", [])
            more.append(nid)
            if len(more) + 1 >= PLAN_GROUP:
                del groups[key]
            continue
        payload = plan_payload(nid, tenant, trace, priority)
        streams.setdefault(plan_stream(priority), []).append(payload)
        groups[key] = payload
    return streams


def planned_ids(message: Message) -> list[str]:
    """The notifications a plan message asks to plan (none when it names none)."""
    payload = message.payload
    first = payload.get("notification")
    if not isinstance(first, str):
        return []
    more = payload.get("more")
    if type(more) is not list:
        return [first]
    return [first, *(nid for nid in more if isinstance(nid, str))]


def by_due_time(
    items: Iterable[Stored], now: float
) -> tuple[list[Delivery], list[tuple[Delivery, float]]]:
    """The deliveries to send now, and those due later (a retry's or a quiet window's
    ``scheduled_for``) with their due time."""
    ready: list[Delivery] = []
    later: list[tuple[Delivery, float]] = []
    for item in items:
        due = item.scheduled_for
        if due is not None and due.timestamp() > now:
            later.append((item.delivery, due.timestamp()))
        else:
            ready.append(item.delivery)
    return ready, later


async def publish_deliveries(
    broker: Broker,
    ready: Sequence[Delivery] = (),
    later: Sequence[tuple[Delivery, float]] = (),
) -> None:
    """Put deliveries on their lanes, and those due later on the delayed set."""
    if tracing.ON:
        ready, later = tracing.stamped(ready, later)
    lanes: dict[str, list[Delivery]] = {}
    for delivery in ready:
        lanes.setdefault(delivery.stream, []).append(delivery)
    for stream, payloads in lanes.items():
        for start in range(0, len(payloads), _PUBLISH_CHUNK):
            await broker.publish(stream, payloads[start : start + _PUBLISH_CHUNK])
    if later:
        await broker.publish_delayed(
            [Delayed(delivery.stream, delivery, due) for delivery, due in later]
        )
