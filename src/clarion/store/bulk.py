"""Set-based bulk writes for PostgreSQL: one statement per batch, with a column's values
sent as one array parameter and unpacked by ``unnest``.

``executemany`` sends one Bind/Execute per row, which both asyncpg and PostgreSQL pay for
row by row; a batch of 2,000 status changes becomes two statements here. SQLite, where a
statement per row costs nothing over the wire, keeps ``executemany``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Column name -> PostgreSQL array type, in table order.
_DELIVERY_COLUMNS: dict[str, str] = {
    "id": "text",
    "notification_id": "text",
    "tenant_id": "text",
    "recipient_id": "text",
    "channel": "text",
    "provider": "text",
    "priority": "text",
    "status": "text",
    "reason": "text",
    "attempts": "int",
    "last_error": "text",
    "address": "json",
    "content": "json",
    "provider_message_id": "text",
    "category": "text",
    "critical": "bool",
    "fallback": "json",
    "scheduled_for": "timestamptz",
    "expires_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "sent_at": "timestamptz",
}
_JSON_COLUMNS = {name for name, kind in _DELIVERY_COLUMNS.items() if kind == "json"}


def _unnest(columns: dict[str, str]) -> str:
    # JSON travels as text (asyncpg has no json[] codec) and is cast back per element.
    arrays = ", ".join(
        f"CAST(:{name} AS {'text' if kind == 'json' else kind}[])" for name, kind in columns.items()
    )
    return f"unnest({arrays})"


def _select(columns: dict[str, str]) -> str:
    return ", ".join(
        f"v.{name}::json" if kind == "json" else f"v.{name}" for name, kind in columns.items()
    )


_INSERT_DELIVERIES = text(
    f"INSERT INTO deliveries ({', '.join(_DELIVERY_COLUMNS)}) "
    f"SELECT {_select(_DELIVERY_COLUMNS)} "
    f"FROM {_unnest(_DELIVERY_COLUMNS)} AS v({', '.join(_DELIVERY_COLUMNS)}) "
    "ON CONFLICT DO NOTHING"
)

_EVENT_COLUMNS = {"delivery_id": "text", "tenant_id": "text", "status": "text", "detail": "text"}

_INSERT_EVENTS = text(
    "INSERT INTO delivery_events (delivery_id, tenant_id, status, detail, created_at) "
    f"SELECT v.delivery_id, v.tenant_id, v.status, v.detail, CAST(:created_at AS timestamptz) "
    f"FROM {_unnest(_EVENT_COLUMNS)} AS v({', '.join(_EVENT_COLUMNS)})"
)

_CHANGE_COLUMNS = {
    "id": "text",
    "status": "text",
    "attempts": "int",
    "reason": "text",
    "last_error": "text",
    "provider_message_id": "text",
    "scheduled_for": "timestamptz",
    "sent_at": "timestamptz",
    "provider": "text",
}

# A provider's report that the message was delivered may arrive before the worker has
# stored its own outcome of the send: the report is the later truth. And an outcome never
# overwrites one of a later attempt: a retry can run (its message published before the
# first outcome is stored) and store its outcome first.
_APPLY_CHANGES = text(
    "UPDATE deliveries AS d SET status = v.status, attempts = v.attempts, "
    "reason = v.reason, last_error = v.last_error, "
    "provider_message_id = v.provider_message_id, scheduled_for = v.scheduled_for, "
    "sent_at = v.sent_at, updated_at = CAST(:updated_at AS timestamptz), "
    "provider = coalesce(v.provider, d.provider) "
    f"FROM {_unnest(_CHANGE_COLUMNS)} AS v({', '.join(_CHANGE_COLUMNS)}) "
    "WHERE d.id = v.id AND d.status <> 'delivered' AND d.attempts <= v.attempts"
)


def _json(value: Any) -> str:
    # Python None is stored as JSON null, as SQLAlchemy's JSON type stores it.
    return orjson.dumps(value).decode()


async def insert_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of delivery rows (dicts with every column)."""
    params = {
        name: [_json(row[name]) for row in rows]
        if name in _JSON_COLUMNS
        else [row[name] for row in rows]
        for name in _DELIVERY_COLUMNS
    }
    await conn.execute(_INSERT_DELIVERIES, params)


async def insert_events(
    conn: AsyncConnection, events: Sequence[tuple[str, str, str, str | None]], at: datetime
) -> None:
    """Delivery events: (delivery id, tenant id, status, detail), all created ``at``."""
    columns: list[list[Any]] = [[], [], [], []]
    for event in events:
        for values, value in zip(columns, event, strict=True):
            values.append(value)
    params: dict[str, Any] = dict(zip(_EVENT_COLUMNS, columns, strict=True))
    params["created_at"] = at
    await conn.execute(_INSERT_EVENTS, params)


async def apply_changes(
    conn: AsyncConnection, changes: Sequence[tuple[Any, ...]], at: datetime
) -> None:
    """Update deliveries from rows of (id, status, attempts, reason, last_error,
    provider message id, scheduled for, sent at, provider); ids must be distinct."""
    columns: list[list[Any]] = [[] for _ in _CHANGE_COLUMNS]
    for change in changes:
        for values, value in zip(columns, change, strict=True):
            values.append(value)
    params: dict[str, Any] = dict(zip(_CHANGE_COLUMNS, columns, strict=True))
    params["updated_at"] = at
    await conn.execute(_APPLY_CHANGES, params)
