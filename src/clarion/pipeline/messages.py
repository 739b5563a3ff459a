"""The messages stages pass through the broker: plain JSON-able data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clarion.domain.models import send_stream
from clarion.providers.base import OutboundMessage
from clarion.store.db import as_utc


def plan_payload(notification_id: str, tenant_id: str) -> dict[str, Any]:
    return {"notification": notification_id, "tenant": tenant_id}


def _ts(value: datetime | None) -> float | None:
    value = as_utc(value)
    return value.timestamp() if value else None


def send_payload(row: dict[str, Any], attempt: int | None = None) -> dict[str, Any]:
    """The message for a delivery row; ``attempt`` is the number of the try it asks for."""
    return {
        "id": row["id"],
        "tenant": row["tenant_id"],
        "notification": row["notification_id"],
        "recipient": row["recipient_id"],
        "channel": row["channel"],
        "provider": row["provider"],
        "priority": row["priority"],
        "to": row["address"],
        "content": row["content"],
        "attempt": attempt if attempt is not None else row["attempts"] + 1,
        "expires_at": _ts(row.get("expires_at")),
        "category": row.get("category"),
        "critical": bool(row.get("critical")),
        "fallback": row.get("fallback"),
    }


def stream_of(payload: dict[str, Any]) -> str:
    return send_stream(payload["channel"], payload["priority"])


def outbound(payload: dict[str, Any]) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=payload["id"],
        tenant_id=payload["tenant"],
        notification_id=payload["notification"],
        recipient_id=payload["recipient"],
        channel=payload["channel"],
        to=payload["to"],
        content=payload["content"],
        priority=payload["priority"],
        attempt=payload["attempt"],
        category=payload.get("category"),
        critical=bool(payload.get("critical")),
        expires_at=payload.get("expires_at"),
    )


def group_by_stream(payloads: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = {}
    for payload in payloads:
        streams.setdefault(stream_of(payload), []).append(payload)
    return streams
