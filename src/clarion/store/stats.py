"""The console dashboard's numbers: a tenant's deliveries of the last minutes, per minute
and channel, and their latency.

One range of ``ix_deliveries_tenant_created`` (``tenant_id, created_at, id``) read newest
first and capped at ``MAX_ROWS``: the cost is bounded by the cap, never by the table. No
index of ``deliveries`` holds the status: the dead-letter count walks the tenant's ``dead``
events (``ix_delivery_events_tenant_status_created``), each delivery's latest, keeps those
whose delivery is dead still, and stops at ``MAX_DEAD + 1`` (store/dead_letters.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.models import DeliveryStatus
from clarion.store.db import as_utc
from clarion.store.dead_letters import DeadFilter, found
from clarion.store.tables import deliveries

MAX_ROWS = 20_000
MAX_DEAD = 10_000
_SENT = {DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value}
_FAILED = {DeliveryStatus.FAILED.value, DeliveryStatus.DEAD.value}


@dataclass(slots=True)
class Minute:
    accepted: int = 0
    sent: int = 0
    failed: int = 0


@dataclass(slots=True)
class Window:
    since: datetime
    until: datetime
    minutes: dict[tuple[datetime, str], Minute] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    truncated: bool = False

    def bucket(self, at: datetime, channel: str) -> Minute | None:
        """The minute of ``at`` if it lies in the window."""
        if not self.since <= at < self.until:
            return None
        key = (at.replace(second=0, microsecond=0), channel)
        found = self.minutes.get(key)
        if found is None:
            found = self.minutes[key] = Minute()
        return found


def _percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _count(window: Window, row: Any) -> None:
    created = as_utc(row.created_at)
    assert created is not None
    accepted = window.bucket(created, row.channel)
    if accepted is not None:
        accepted.accepted += 1
    if row.status in _SENT and row.sent_at is not None:
        sent_at = as_utc(row.sent_at)
        assert sent_at is not None
        sent = window.bucket(sent_at, row.channel)
        if sent is not None:
            sent.sent += 1
            window.latencies[row.channel].append((sent_at - created).total_seconds() * 1000)
    elif row.status in _FAILED:
        failed_at = as_utc(row.updated_at)
        failed = window.bucket(failed_at, row.channel) if failed_at else None
        if failed is not None:
            failed.failed += 1


def window_query(tenant_id: str, since: datetime) -> Select[Any]:
    """The newest deliveries created since ``since``: a backwards range of
    ``ix_deliveries_tenant_created``, at most ``MAX_ROWS + 1`` rows."""
    return (
        select(
            deliveries.c.created_at,
            deliveries.c.channel,
            deliveries.c.status,
            deliveries.c.sent_at,
            deliveries.c.updated_at,
        )
        .where(deliveries.c.tenant_id == tenant_id, deliveries.c.created_at >= since)
        .order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc())
        .limit(MAX_ROWS + 1)
    )


def dead_query(tenant_id: str) -> Select[Any]:
    """How many dead letters, counting at most ``MAX_DEAD + 1`` of them."""
    capped = found(DeadFilter(tenant_id), MAX_DEAD + 1).subquery()
    return select(func.count()).select_from(capped)


async def window(engine: AsyncEngine, tenant_id: str, now: datetime, minutes: int) -> Window:
    """The deliveries created in the last ``minutes`` (up to ``MAX_ROWS``, newest first)."""
    since = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    result = Window(since=since, until=now)
    async with engine.connect() as conn:
        rows = (await conn.execute(window_query(tenant_id, since))).all()
    result.truncated = len(rows) > MAX_ROWS
    for row in rows[:MAX_ROWS]:
        _count(result, row)
    return result


def latency(window: Window) -> dict[str, dict[str, float | int]]:
    """p50 and p99 of creation-to-sent time, per channel, in milliseconds."""
    out: dict[str, dict[str, float | int]] = {}
    for channel, values in sorted(window.latencies.items()):
        ordered = sorted(values)
        out[channel] = {
            "p50": round(_percentile(ordered, 0.5), 1),
            "p99": round(_percentile(ordered, 0.99), 1),
            "samples": len(ordered),
        }
    return out


async def dead_letters(engine: AsyncEngine, tenant_id: str) -> int:
    """How many dead letters the tenant has, counting no further than ``MAX_DEAD + 1``."""
    async with engine.connect() as conn:
        found = await conn.scalar(dead_query(tenant_id))
    return int(found or 0)
