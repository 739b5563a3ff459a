"""Digest windows and what they hold, on either store (SQLAlchemy Core: none of this is on
a path that runs per delivery).

Holding (the planner, once per batch): one upsert opens the windows that are not open yet
and counts what joins those that are, returning their ids, then one insert adds the items
(a delivery id already held is skipped, so a replayed plan holds nothing twice). Each
window opened gets, in the same transaction, its carrier: a run of the built-in workflow
``~digest`` (:func:`carrier_row`) that waits until the window closes; a window that fills
has its carrier made due at once. On PostgreSQL the upsert's ``DO UPDATE`` locks each open
window until the planner commits, so its carrier closing it meanwhile waits for the
planner and sums up every item; a window closed meanwhile is no longer in the unique index
of open windows, and the upsert opens a new one. On SQLite writers take turns.

Closing is the carrier's, woken by the run engine (store/digest_closing.py). Closed
windows and their items are kept a day (see ``RETAIN``), then pruned by the scheduler
role's retention pass, which also gives a carrier to an overdue open window that has none
(:func:`adopt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.digests import MAX_ITEMS, digest_notification_id
from clarion.domain.ids import new_id
from clarion.domain.runs import WAITING, RunStatus, StepRecord, run_id
from clarion.domain.workflows import BUILTIN_VERSION, COLLECT_STEP, DIGEST_FLOW
from clarion.store.db import as_utc, write_tx
from clarion.store.sql import chunks, execute_many, insert_ignoring_conflicts
from clarion.store.tables import digest_items, digest_windows, workflow_runs

# A closed window (and what it held) is kept this long: a plan replayed after a crash
# (within a broker lease or the outbox's grace, seconds to minutes) finds its items held.
RETAIN = timedelta(days=1)
# Closed windows forgotten in one pass of the retention keeper (pipeline/scheduler.py).
PRUNE_BATCH = 1000
# An open window this long past its closing time is looked at for a carrier (``adopt``).
ORPHAN_AFTER = timedelta(minutes=5)
WINDOW_KEY = ("tenant_id", "recipient_id", "channel", "category", "dkey")

WindowKey = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Held:
    """One notification's delivery on one channel, held for a digest."""

    tenant_id: str
    recipient_id: str
    channel: str
    category: str
    key: str
    window: int  # seconds the window stays open
    delivery_id: str
    notification_id: str

    @property
    def window_key(self) -> WindowKey:
        return (self.tenant_id, self.recipient_id, self.channel, self.category, self.key)


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def hold(engine: AsyncEngine, items: Sequence[Held], now: datetime) -> None:
    """Put each item in the open window of its key, opening the windows that are not, in
    one transaction."""
    if not items:
        return
    async with write_tx(engine) as conn:
        await hold_in(conn, items, now)


async def hold_in(conn: AsyncConnection, items: Sequence[Held], now: datetime) -> None:
    """:func:`hold` within the caller's transaction (its windows stay locked until the
    caller commits). A window opened here gets its carrier run (:func:`carrier_row`); one
    that fills here has its carrier woken at once."""
    groups: dict[WindowKey, list[Held]] = {}
    for item in items:
        groups.setdefault(item.window_key, []).append(item)
    windows: dict[WindowKey, _Opened] = {}
    # Windows are locked in key order, so that planners holding overlapping sets of
    # windows at once never wait on each other in a cycle.
    for part in chunks(sorted(groups.items()), 500):
        windows.update(await _open(conn, part, now))
    rows = [
        {
            "window_id": windows[item.window_key].id,
            "delivery_id": item.delivery_id,
            "notification_id": item.notification_id,
            "created_at": now,
        }
        for item in items
    ]
    for part in chunks(rows, 1000):
        await conn.execute(insert_ignoring_conflicts(conn, digest_items), part)
    carriers = [
        carrier_row(w.id, key[0], key[1], w.closes_at, now) for key, w in windows.items() if w.fresh
    ]
    for part in chunks(carriers, 1000):
        await execute_many(conn, insert_ignoring_conflicts(conn, workflow_runs), part)
    full = [
        {"b_id": run_id(digest_notification_id(w.id), key[1]), "b_now": now}
        for key, w in windows.items()
        if w.full and not w.fresh
    ]
    for part in chunks(full, 1000):
        await execute_many(conn, _WAKE_NOW, part)


# A full window's carrier is due at once (one waiting for a later close; an ended one has
# no wake time).
_WAKE_NOW = (
    update(workflow_runs)
    .where(workflow_runs.c.id == bindparam("b_id"), workflow_runs.c.wake_at > bindparam("b_now"))
    .values(wake_at=bindparam("b_now"))
)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A window items were just held in: its id, when it closes, whether this hold opened
    it, and whether it is full."""

    id: str
    closes_at: datetime
    fresh: bool
    full: bool


def carrier_row(
    window_id: str,
    tenant_id: str,
    recipient_id: str,
    closes_at: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The run that carries a category digest's window (the built-in workflow
    ``~digest``): the window's recipient's, its notification the digest to be, waiting in
    its one step until the window closes. Its step names the window."""
    nid = digest_notification_id(window_id)
    closes = utc(closes_at)
    step = StepRecord(
        COLLECT_STEP, WAITING, now.timestamp(), until=closes.timestamp(), window=window_id
    )
    return {
        "id": run_id(nid, recipient_id),
        "tenant_id": tenant_id,
        "notification_id": nid,
        "recipient_id": recipient_id,
        "workflow": DIGEST_FLOW,
        "version": BUILTIN_VERSION,
        "cancellation_key": None,
        "status": RunStatus.WAITING,
        "step": 0,
        "turn": 0,
        "steps": [step.to_json()],
        "wake_at": closes,
        "created_at": now,
        "updated_at": now,
    }


async def _open(
    conn: AsyncConnection, groups: list[tuple[WindowKey, list[Held]]], now: datetime
) -> dict[WindowKey, _Opened]:
    t = digest_windows
    values = [
        {
            "id": new_id("dgw"),
            **dict(zip(WINDOW_KEY, key, strict=True)),
            "held": len(held),
            "opened_at": now,
            "closes_at": now + timedelta(seconds=held[0].window),
            "closed_at": None,
            "notification_id": None,
        }
        for key, held in groups
    ]
    proposed = {row["id"] for row in values}
    stmt = _insert(conn)(t).values(values)
    full = t.c.held + stmt.excluded.held >= MAX_ITEMS
    stmt = stmt.on_conflict_do_update(
        index_elements=list(WINDOW_KEY),
        index_where=t.c.closed_at.is_(None),
        set_={
            "held": t.c.held + stmt.excluded.held,
            # A full window closes at once: its carrier is woken (hold_in).
            "closes_at": case((full, stmt.excluded.opened_at), else_=t.c.closes_at),
        },
    ).returning(t.c.id, t.c.closes_at, t.c.held, *(t.c[name] for name in WINDOW_KEY))
    found = await conn.execute(stmt)
    return {
        tuple(row[3:]): _Opened(
            row.id,
            utc(row.closes_at),
            # The row this statement proposed is the one there: it opened the window.
            row.id in proposed,
            row.held >= MAX_ITEMS,
        )
        for row in found
    }


async def windows(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """These windows' rows, by id (those that are gone are missing)."""
    t = digest_windows
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    async with engine.connect() as conn:
        for part in chunks(list(ids), 1000):
            rows = await conn.execute(select(t).where(t.c.id.in_(part)))
            found.update((row["id"], dict(row)) for row in rows.mappings())
    return found


async def adopt(engine: AsyncEngine, now: datetime, limit: int = PRUNE_BATCH) -> int:
    """Give a carrier to each open window overdue by ``ORPHAN_AFTER`` that has none (one a
    planner of an earlier version opened during an upgrade's rolling restart), which the
    run engine then closes; how many it gave. A window whose carrier is there (behind a
    backlog of due runs, say) keeps it: at rest this is one read of the open windows'
    ``closes_at`` index."""
    t, r = digest_windows, workflow_runs
    query = (
        select(t.c.id, t.c.tenant_id, t.c.recipient_id, t.c.closes_at)
        .where(t.c.closed_at.is_(None), t.c.closes_at < now - ORPHAN_AFTER)
        .order_by(t.c.closes_at)
        .limit(limit)
    )
    async with engine.connect() as conn:
        overdue = (await conn.execute(query)).all()
        if not overdue:
            return 0
        wanted = {run_id(digest_notification_id(w.id), w.recipient_id): w for w in overdue}
        there = select(r.c.id).where(r.c.id.in_(list(wanted)))
        present = set((await conn.execute(there)).scalars())
    missing = [
        carrier_row(w.id, w.tenant_id, w.recipient_id, w.closes_at, now)
        for rid, w in wanted.items()
        if rid not in present
    ]
    if missing:
        async with write_tx(engine) as conn:
            await execute_many(conn, insert_ignoring_conflicts(conn, workflow_runs), missing)
    return len(missing)


async def prune(engine: AsyncEngine, now: datetime, limit: int = PRUNE_BATCH) -> int:
    """Forget windows closed more than ``RETAIN`` ago, and their items."""
    t = digest_windows
    async with write_tx(engine) as conn:
        query = select(t.c.id).where(t.c.closed_at < now - RETAIN).limit(limit)
        ids = list((await conn.execute(query)).scalars())
        await _forget(conn, ids)
    return len(ids)


async def forget_recipient(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    """Erasure: the recipient's windows, open or closed, and what they hold."""
    t = digest_windows
    query = select(t.c.id).where(t.c.tenant_id == tenant_id, t.c.recipient_id == recipient_id)
    await _forget(conn, list((await conn.execute(query)).scalars()))


async def _forget(conn: AsyncConnection, ids: list[str]) -> None:
    for part in chunks(ids, 1000):
        await conn.execute(delete(digest_items).where(digest_items.c.window_id.in_(part)))
        await conn.execute(delete(digest_windows).where(digest_windows.c.id.in_(part)))


async def open_windows(
    engine_or_conn: AsyncEngine | AsyncConnection, tenant_id: str, recipient_id: str
) -> list[dict[str, Any]]:
    """The recipient's open windows, oldest first, with how many notifications each holds
    (``items``; the export lists them)."""
    t, i = digest_windows, digest_items
    query = (
        select(
            t.c.id,
            t.c.channel,
            t.c.category,
            t.c.dkey,
            t.c.opened_at,
            t.c.closes_at,
            func.count(i.c.id).label("items"),
        )
        .outerjoin(i, i.c.window_id == t.c.id)
        .where(t.c.tenant_id == tenant_id, t.c.recipient_id == recipient_id)
        .where(t.c.closed_at.is_(None))
        .group_by(t.c.id, t.c.channel, t.c.category, t.c.dkey, t.c.opened_at, t.c.closes_at)
        .order_by(t.c.opened_at, t.c.id)
    )
    if isinstance(engine_or_conn, AsyncEngine):
        async with engine_or_conn.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
    else:
        rows = (await engine_or_conn.execute(query)).mappings().all()
    return [
        {**row, "opened_at": as_utc(row["opened_at"]), "closes_at": as_utc(row["closes_at"])}
        for row in rows
    ]
