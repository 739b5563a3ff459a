"""A delivery on its way to a provider: the one shape every stage hands to the channel lanes.

The planner, the sweeper, embedded recovery, dead-letter replay and a worker's fallback all
make a :class:`Delivery` from a stored row (:meth:`Delivery.from_row`) and publish it; a
channel worker reads it back from the broker (:meth:`Delivery.from_payload`) and a retry is
the same delivery asking for its next attempt. The wire form (:meth:`Delivery.to_payload`)
is plain JSON with stable keys, so messages published by an earlier version still decode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clarion.domain.models import send_stream


class MalformedDelivery(ValueError):
    """A send message that is not a delivery (a missing or mistyped field)."""


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes; everything Clarion stores is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _traceparent(value: Any) -> str | None:
    """An optional field: anything but a string of a traceparent's length is ignored."""
    return value if isinstance(value, str) and len(value) == 55 else None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    tenant: str
    notification: str
    recipient: str
    channel: str
    # The planned provider (failover may send through another).
    provider: str | None
    priority: str
    # The channel's address and the rendered content (see providers.base.OutboundMessage).
    to: Any
    content: Any
    # The number of the try this message asks for (1 for the first).
    attempt: int
    # When it stops being worth delivering (epoch seconds), if it has a deadline.
    expires_at: float | None = None
    category: str | None = None
    critical: bool = False
    # For a critical delivery: the channel, address and content to switch to when its own
    # channel has no healthy provider.
    fallback: dict[str, Any] | None = None
    # The W3C traceparent of the trace it belongs to (observability/tracing.py), when
    # tracing is on; optional on the wire, absent otherwise.
    trace: str | None = None

    @property
    def stream(self) -> str:
        """The lane it is published to."""
        return send_stream(self.channel, self.priority)

    def next_attempt(self) -> Delivery:
        return dataclasses.replace(self, attempt=self.attempt + 1)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], attempt: int | None = None) -> Delivery:
        """The delivery of a stored row; by default it asks for the try after the row's."""
        return cls(
            id=row["id"],
            tenant=row["tenant_id"],
            notification=row["notification_id"],
            recipient=row["recipient_id"],
            channel=row["channel"],
            provider=row["provider"],
            priority=row["priority"],
            to=row["address"],
            content=row["content"],
            attempt=attempt if attempt is not None else row["attempts"] + 1,
            expires_at=_timestamp(row.get("expires_at")),
            category=row.get("category"),
            critical=bool(row.get("critical")),
            fallback=row.get("fallback"),
            # A row read with its notification's stored traceparent (store/deliveries.py).
            trace=_traceparent(row.get("trace")),
        )

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant,
            "notification": self.notification,
            "recipient": self.recipient,
            "channel": self.channel,
            "provider": self.provider,
            "priority": self.priority,
            "to": self.to,
            "content": self.content,
            "attempt": self.attempt,
            "expires_at": self.expires_at,
            "category": self.category,
            "critical": self.critical,
            "fallback": self.fallback,
        }
        if self.trace is not None:
            payload["traceparent"] = self.trace
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Delivery:
        """Read a send message back; :class:`MalformedDelivery` if it is not one."""
        try:
            delivery = cls(
                id=payload["id"],
                tenant=payload["tenant"],
                notification=payload["notification"],
                recipient=payload["recipient"],
                channel=payload["channel"],
                provider=payload.get("provider"),
                priority=payload["priority"],
                to=payload.get("to"),
                content=payload.get("content"),
                attempt=payload["attempt"],
                expires_at=payload.get("expires_at"),
                category=payload.get("category"),
                critical=bool(payload.get("critical")),
                fallback=payload.get("fallback"),
                trace=_traceparent(payload.get("traceparent")),
            )
        except (KeyError, TypeError) as exc:
            raise MalformedDelivery(f"not a delivery: missing {exc}") from exc
        strings = (
            delivery.id,
            delivery.tenant,
            delivery.notification,
            delivery.recipient,
            delivery.channel,
            delivery.priority,
        )
        if not all(isinstance(value, str) for value in strings):
            raise MalformedDelivery("not a delivery: an id, channel or priority is not a string")
        if type(delivery.attempt) is not int or delivery.attempt < 1:
            raise MalformedDelivery(f"not a delivery: attempt {delivery.attempt!r}")
        if delivery.expires_at is not None and not isinstance(delivery.expires_at, int | float):
            raise MalformedDelivery(f"not a delivery: expires_at {delivery.expires_at!r}")
        if delivery.fallback is not None and not isinstance(delivery.fallback, dict):
            raise MalformedDelivery("not a delivery: fallback is not an object")
        return delivery
