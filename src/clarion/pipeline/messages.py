"""The messages stages pass through the broker, and the one way deliveries are published."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clarion.broker import Broker, Delayed
from clarion.domain.delivery import Delivery, Stored
from clarion.observability import tracing
from clarion.pipeline.urgency import URGENT

# Messages per XADD pipeline: bounds one round trip, not what a call may publish.
_PUBLISH_CHUNK = 1000


def plan_payload(
    notification_id: str, tenant_id: str, trace: str | None = None, priority: str | None = None
) -> dict[str, Any]:
    payload = {"notification": notification_id, "tenant": tenant_id}
    if trace is not None:  # tracing on: the W3C traceparent of the notification's trace
        payload["traceparent"] = trace
    if priority in URGENT:  # its planning is urgent work (pipeline/urgency.py)
        payload["priority"] = priority
    return payload


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
