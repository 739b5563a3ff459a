"""The runs of recurring schedules: created once per (schedule, due time, zone), taken by
one scheduler at a time under a lease, moved forward only by the holder of that lease.

Every claim is one guarded statement: a run is created with ``INSERT ... ON CONFLICT DO
NOTHING`` on its unique key, taken with an ``UPDATE`` that matches the lease it read, and
each step of it (a chunk of its audience made into a notification) is recorded with an
``UPDATE`` that matches the lease its taker holds, so a scheduler that lost its lease stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.ids import new_id
from clarion.store import schedules
from clarion.store.db import as_utc, write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import finds_any, insert_ignoring_conflicts
from clarion.store.tables import schedule_runs

r = schedule_runs

PENDING, RUNNING = "pending", "running"
COMPLETED, FAILED, SKIPPED = "completed", "failed", "skipped"
OPEN = (PENDING, RUNNING)
# A run's list of notification ids is bounded (a recipient schedule over a topic makes one
# notification per 1,000 recipients of a zone); the count of recipients is always kept.
MAX_IDS = 2000


async def create(
    conn: AsyncConnection,
    tenant_id: str,
    schedule: str,
    due: Sequence[tuple[datetime, str]],
    now: datetime,
) -> int:
    """Create the runs of these (due time, zone) pairs that do not exist yet."""
    rows: list[dict[str, Any]] = [
        {
            "id": new_id("run"),
            "tenant_id": tenant_id,
            "schedule": schedule,
            "due_at": due_at,
            "zone": zone,
            "status": PENDING,
            "lease_until": due_at,
            "cursor": None,
            "notification_ids": [],
            "recipients": 0,
            "error": None,
            "created_at": now,
        }
        for due_at, zone in sorted(due)
    ]
    if not rows:
        return 0
    result = await conn.execute(insert_ignoring_conflicts(conn, r), rows)
    return max(result.rowcount, 0)


def _run(row: Any) -> dict[str, Any]:
    out = dict(row)
    for name in ("due_at", "lease_until", "created_at", "fired_at", "finished_at"):
        out[name] = as_utc(out[name])
    return out


_ANY_DUE = (
    "SELECT EXISTS (SELECT 1 FROM schedule_runs WHERE status = ANY($1) AND lease_until <= $2)"
)


async def take(
    engine: AsyncEngine, now: datetime, lease: float, limit: int, pg: PgPool | None = None
) -> list[dict[str, Any]]:
    """Take open runs whose lease has passed (new ones are due at once): each with an
    ``UPDATE`` guarded by the lease read, so of several schedulers one takes it. Asked
    first whether any is (:func:`finds_any`)."""

    def due() -> Select[Any]:
        return select(r.c.id).where(r.c.status.in_(OPEN), r.c.lease_until <= now)

    if not await finds_any(engine, pg, due, _ANY_DUE, list(OPEN), now):
        return []
    query = (
        select(r)
        .where(r.c.status.in_(OPEN), r.c.lease_until <= now)
        .order_by(r.c.lease_until)
        .limit(limit)
    )
    async with engine.connect() as conn:
        candidates = [_run(row) for row in (await conn.execute(query)).mappings()]
    taken: list[dict[str, Any]] = []
    until = now + timedelta(seconds=lease)
    for run in candidates:
        async with write_tx(engine) as conn:
            result = await conn.execute(
                update(r)
                .where(r.c.id == run["id"], r.c.lease_until == run["lease_until"])
                .where(r.c.status.in_(OPEN))
                .values(status=RUNNING, lease_until=until, fired_at=run["fired_at"] or now)
            )
        if result.rowcount == 1:
            taken.append({**run, "status": RUNNING, "lease_until": until})
    return taken


async def step(
    engine: AsyncEngine,
    run: dict[str, Any],
    *,
    cursor: str | None,
    notification_ids: Sequence[str],
    recipients: int,
    lease_until: datetime,
) -> bool:
    """Record a step of a run held by the caller and renew its lease; False if the lease
    is no longer the caller's (another scheduler took the run, or it was deleted)."""
    ids = list(dict.fromkeys([*run["notification_ids"], *notification_ids]))[:MAX_IDS]
    async with write_tx(engine) as conn:
        result = await conn.execute(
            update(r)
            .where(r.c.id == run["id"], r.c.lease_until == run["lease_until"])
            .values(
                cursor=cursor,
                notification_ids=ids,
                recipients=run["recipients"] + recipients,
                lease_until=lease_until,
            )
        )
    if result.rowcount != 1:
        return False
    run.update(
        cursor=cursor,
        notification_ids=ids,
        recipients=run["recipients"] + recipients,
        lease_until=lease_until,
    )
    return True


async def wait(engine: AsyncEngine, run: dict[str, Any], until: datetime, why: str) -> bool:
    """Hand back a run held by the caller, to be taken again at ``until`` (its cursor
    kept), saying why in its ``error``; False if the lease is no longer the caller's."""
    return await _while_leased(engine, run, status=PENDING, lease_until=until, error=why)


async def finish(
    engine: AsyncEngine, run: dict[str, Any], status: str, now: datetime, error: str | None = None
) -> bool:
    return await _while_leased(engine, run, status=status, error=error, finished_at=now)


async def _while_leased(engine: AsyncEngine, run: dict[str, Any], **values: Any) -> bool:
    """Set ``values`` on a run held by the caller; False if its lease is no longer theirs."""
    async with write_tx(engine) as conn:
        result = await conn.execute(
            update(r)
            .where(r.c.id == run["id"], r.c.lease_until == run["lease_until"])
            .values(**values)
        )
    return result.rowcount == 1


async def plan(
    engine: AsyncEngine,
    schedule: dict[str, Any],
    due: Sequence[tuple[datetime, str]],
    now: datetime,
    following: datetime | None,
    forget_before: datetime,
) -> int:
    """In one transaction: move the schedule's watermark to ``now`` (its next look at
    ``following``), create the runs of ``due`` and forget the finished ones due before
    ``forget_before``. How many runs it made; 0 when another scheduler (or a replacement of
    the schedule) moved the watermark first."""
    tenant_id, name = schedule["tenant_id"], schedule["name"]
    async with write_tx(engine) as conn:
        if not await schedules.advance(conn, schedule, now, following):
            return 0
        made = await create(conn, tenant_id, name, due, now)
        await prune(conn, tenant_id, name, forget_before)
    return made


async def prune(conn: AsyncConnection, tenant_id: str, schedule: str, before: datetime) -> None:
    """Forget finished runs due before ``before``: the history is bounded in time."""
    await conn.execute(
        delete(r).where(
            r.c.tenant_id == tenant_id,
            r.c.schedule == schedule,
            r.c.due_at < before,
            r.c.status.in_((COMPLETED, FAILED, SKIPPED)),
        )
    )


def to_public(row: dict[str, Any]) -> dict[str, Any]:
    ids = row["notification_ids"] or []
    return {
        "id": row["id"],
        "due_at": row["due_at"],
        "zone": row["zone"],
        "status": row["status"],
        "fired_at": row["fired_at"],
        "finished_at": row["finished_at"],
        "notification_id": ids[0] if ids else None,
        "notification_ids": ids,
        "recipients": row["recipients"],
        "error": row["error"],
    }


async def page(
    engine: AsyncEngine, tenant_id: str, schedule: str, before: str | None, limit: int
) -> list[dict[str, Any]]:
    """A schedule's runs, newest first, before the cursor (a run id)."""
    query = select(r).where(r.c.tenant_id == tenant_id, r.c.schedule == schedule)
    if before is not None:
        query = query.where(r.c.id < before)
    query = query.order_by(r.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [to_public(_run(row)) for row in (await conn.execute(query)).mappings()]


async def of_schedule(engine: AsyncEngine, tenant_id: str, schedule: str) -> list[dict[str, Any]]:
    """Every run of a schedule, in due order (tests and the console)."""
    query = (
        select(r)
        .where(r.c.tenant_id == tenant_id, r.c.schedule == schedule)
        .order_by(r.c.due_at, r.c.zone)
    )
    async with engine.connect() as conn:
        return [_run(row) for row in (await conn.execute(query)).mappings()]
