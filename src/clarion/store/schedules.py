"""Recurring schedules: their definitions, the scheduler's scan, and their audiences.

A schedule's row says when the scheduler looks at it next (``next_run_at``) and up to when
every due time has its run (``fired_through``). A scheduler moves ``fired_through`` forward
with an ``UPDATE`` guarded by the value it read, and only the one whose update matched
creates the runs (``store/schedule_runs.py``), whose unique (schedule, due time, zone) key
is a second guard: several schedulers create each run once.

Creating, replacing and deleting a schedule write an audit row in the same transaction;
a tenant holds at most a set number of schedules (``CLARION_MAX_SCHEDULES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, Text, cast, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.cron import DEFAULT_ZONE
from clarion.domain.refusal import Reason, Refused
from clarion.store import audit
from clarion.store.db import as_utc, shown, write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import finds_any, first_row, upsert
from clarion.store.tables import (
    recipients,
    schedule_runs,
    schedules,
    tenants,
    topic_subscribers,
)

s = schedules
_FIELDS = ("cron", "timezone", "notification", "enabled", "starts_at", "ends_at")


def _public(row: Any) -> dict[str, Any]:
    return shown(row, ("name", *_FIELDS, "next_run_at", "created_at", "updated_at"))


def _stored(row: Any) -> dict[str, Any]:
    out = dict(row)
    for name in ("starts_at", "ends_at", "fired_through", "next_run_at"):
        out[name] = as_utc(out[name])
    return out


async def current(engine: AsyncEngine, tenant_id: str, name: str) -> dict[str, Any] | None:
    """The stored row (for the scheduler and for a replacement), or None."""
    query = select(s).where(s.c.tenant_id == tenant_id, s.c.name == name)
    row = await first_row(engine, query)
    return _stored(row) if row is not None else None


def _audited(row: Any) -> dict[str, Any] | None:
    """What the audit log shows of a schedule: its definition, timestamps as text."""
    if row is None:
        return None
    shown = {name: row[name] for name in _FIELDS}
    for name in ("starts_at", "ends_at"):
        at = as_utc(shown[name])
        shown[name] = at.isoformat() if at is not None else None
    return shown


async def put(
    engine: AsyncEngine,
    tenant_id: str,
    name: str,
    values: dict[str, Any],
    *,
    actor: str,
    most: int,
) -> bool | Refused:
    """Create or replace a schedule (``values``: its fields, ``fired_through``,
    ``next_run_at``, ``updated_at`` and the request's ``trace``); True if it was created.
    Creating one when the tenant holds ``most`` already is refused."""
    row = {"tenant_id": tenant_id, "name": name, "created_at": values["updated_at"], **values}
    mine = (s.c.tenant_id == tenant_id) & (s.c.name == name)
    async with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Creations of one tenant's schedules in turn, so the cap holds under races.
            lock = select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update()
            await conn.execute(lock)
        before = (await conn.execute(select(s).where(mine))).mappings().first()
        if before is None:
            held = select(func.count()).select_from(s).where(s.c.tenant_id == tenant_id)
            if int((await conn.execute(held)).scalar_one()) >= most:
                return Refused(
                    Reason.TOO_MANY_SCHEDULES,
                    f"this tenant has {most} schedules, the most it may have; delete one "
                    "first (CLARION_MAX_SCHEDULES)",
                    [{"limit": most}],
                )
        replace = [*_FIELDS, "fired_through", "next_run_at", "updated_at", "trace"]
        await conn.execute(upsert(conn, s, ["tenant_id", "name"], replace), [row])
        change = audit.diff(_audited(before), _audited(row))
        action = audit.Action.CREATE if before is None else audit.Action.UPDATE
        await audit.record(
            conn, audit.Change(tenant_id, actor, audit.Resource.SCHEDULE, name, action, change)
        )
    return before is None


async def get(engine: AsyncEngine, tenant_id: str, name: str) -> dict[str, Any] | None:
    query = select(s).where(s.c.tenant_id == tenant_id, s.c.name == name)
    row = await first_row(engine, query)
    return _public(row) if row is not None else None


async def page(
    engine: AsyncEngine, tenant_id: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """The tenant's schedules in name order, after the cursor; up to ``limit`` rows."""
    query = select(s).where(s.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(s.c.name > after)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(s.c.name).limit(limit))).mappings().all()
    return [_public(row) for row in rows]


async def remove(engine: AsyncEngine, tenant_id: str, name: str, *, actor: str) -> bool:
    """Delete a schedule and its run history; a run in progress stops at its next step."""
    r = schedule_runs
    mine = (s.c.tenant_id == tenant_id) & (s.c.name == name)
    async with write_tx(engine) as conn:
        before = (await conn.execute(select(s).where(mine))).mappings().first()
        if before is None:
            return False
        await conn.execute(delete(s).where(mine))
        await conn.execute(delete(r).where(r.c.tenant_id == tenant_id, r.c.schedule == name))
        await audit.record(
            conn,
            audit.Change(
                tenant_id,
                actor,
                audit.Resource.SCHEDULE,
                name,
                audit.Action.DELETE,
                audit.diff(_audited(before), None),
            ),
        )
    return True


_ANY_DUE = "SELECT EXISTS (SELECT 1 FROM schedules WHERE next_run_at <= $1)"


async def due(
    engine: AsyncEngine, now: datetime, limit: int, pg: PgPool | None = None
) -> list[dict[str, Any]]:
    """Schedules whose next look is due (disabled ones have none), asked first whether
    any is (:func:`finds_any`)."""

    def some() -> Select[Any]:
        return select(s.c.name).where(s.c.next_run_at <= now)

    if not await finds_any(engine, pg, some, _ANY_DUE, now):
        return []
    query = select(s).where(s.c.next_run_at <= now).order_by(s.c.next_run_at).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [_stored(row) for row in rows]


async def advance(
    conn: AsyncConnection,
    schedule: dict[str, Any],
    fired_through: datetime,
    next_run_at: datetime | None,
) -> bool:
    """Move the schedule's watermark from the value read to ``fired_through``; False if
    another scheduler (or a replacement of the schedule) moved it first."""
    result = await conn.execute(
        update(s)
        .where(
            s.c.tenant_id == schedule["tenant_id"],
            s.c.name == schedule["name"],
            s.c.fired_through == schedule["fired_through"],
        )
        .values(fired_through=fired_through, next_run_at=next_run_at)
    )
    return result.rowcount == 1


async def postpone(engine: AsyncEngine, schedule: dict[str, Any], until: datetime) -> None:
    """Look at a schedule that could not be advanced again later, not at every pass."""
    async with write_tx(engine) as conn:
        await conn.execute(
            update(s)
            .where(
                s.c.tenant_id == schedule["tenant_id"],
                s.c.name == schedule["name"],
                s.c.fired_through == schedule["fired_through"],
            )
            .values(next_run_at=until)
        )


def _audience(tenant_id: str, to: dict[str, Any]) -> tuple[Any, list[ColumnElement[bool]]]:
    r = recipients
    where: list[ColumnElement[bool]] = [r.c.tenant_id == tenant_id]
    if to.get("topic"):
        t = topic_subscribers
        source: Any = r.join(t, (t.c.tenant_id == r.c.tenant_id) & (t.c.recipient_id == r.c.id))
        where.append(t.c.topic == to["topic"])
    else:
        source = r
        where.append(r.c.id.in_(listed(to)))
    return source, where


def listed(to: dict[str, Any]) -> list[str]:
    """The recipient ids a stored ``to`` lists (none for a topic)."""
    if to.get("recipient_id"):
        return [to["recipient_id"]]
    return list(dict.fromkeys(to.get("recipient_ids") or []))


def _in_zone(zone: str) -> ColumnElement[bool]:
    if zone == DEFAULT_ZONE:
        return or_(recipients.c.timezone.is_(None), recipients.c.timezone == zone)
    return recipients.c.timezone == zone


async def zones(engine: AsyncEngine, tenant_id: str, to: dict[str, Any]) -> list[str]:
    """The distinct time zones of an audience (recipients without one count as UTC)."""
    source, where = _audience(tenant_id, to)
    query = select(recipients.c.timezone).distinct().select_from(source).where(*where)
    async with engine.connect() as conn:
        found = (await conn.execute(query)).scalars().all()
    return sorted({zone or DEFAULT_ZONE for zone in found})


async def audience_chunk(
    engine: AsyncEngine,
    tenant_id: str,
    to: dict[str, Any],
    zone: str | None,
    after: str | None,
    limit: int,
) -> list[str]:
    """The next ids of an audience, in id order, after ``after``: the recipients that
    exist now, only those in ``zone`` when one is given."""
    source, where = _audience(tenant_id, to)
    if zone is not None:
        where.append(_in_zone(zone))
    if after is not None:
        where.append(recipients.c.id > after)
    query = (
        select(recipients.c.id)
        .select_from(source)
        .where(*where)
        .order_by(recipients.c.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def unknown_recipients(engine: AsyncEngine, tenant_id: str, ids: Sequence[str]) -> list[str]:
    r = recipients
    query = select(r.c.id).where(r.c.tenant_id == tenant_id, r.c.id.in_(list(ids)))
    async with engine.connect() as conn:
        found = set((await conn.execute(query)).scalars())
    return [rid for rid in ids if rid not in found]


async def forget_recipient(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    """Erasure: schedules stop listing the recipient; one that addressed only them (its
    data was about them) is deleted with its runs."""
    needle = orjson.dumps(recipient_id).decode()
    mentioning = select(s.c.name, s.c.notification).where(
        s.c.tenant_id == tenant_id, cast(s.c.notification, Text).contains(needle, autoescape=True)
    )
    for name, body in (await conn.execute(mentioning)).all():
        before = listed(body["to"])
        if recipient_id not in before:
            continue  # the id appears elsewhere (in data, or as a topic name)
        rest = [rid for rid in before if rid != recipient_id]
        where = (s.c.tenant_id == tenant_id) & (s.c.name == name)
        if not rest:
            r = schedule_runs
            await conn.execute(delete(s).where(where))
            await conn.execute(delete(r).where(r.c.tenant_id == tenant_id, r.c.schedule == name))
            continue
        to = {"recipient_ids": rest}
        await conn.execute(update(s).where(where).values(notification={**body, "to": to}))
