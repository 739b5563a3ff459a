"""Digest windows and what they hold, on either store (SQLAlchemy Core: none of this is on
a path that runs per delivery).

Holding (the planner, once per batch): one upsert opens the windows that are not open yet
and counts what joins those that are, returning their ids, then one insert adds the items
(a delivery id already held is skipped, so a replayed plan holds nothing twice). On
PostgreSQL the upsert's ``DO UPDATE`` locks each open window until the planner commits, so
a closing scheduler (``FOR UPDATE SKIP LOCKED``) passes it by and sees every item of it the
next time; a window a scheduler closed meanwhile is no longer in the unique index of open
windows, and the upsert opens a new one. On SQLite writers take turns.

Closing (the scheduler): in one transaction, the due windows are taken, their items read,
one notification per window inserted with its outbox row (its id derives from the
window's, ``ON CONFLICT DO NOTHING``), and the windows marked closed. A scheduler that dies
before the commit leaves everything as it was; after it, the outbox row brings the
notification to the planner. Closed windows and their items are kept a day (see
``RETAIN``), then pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.digests import MAX_ITEMS, digest_notification_id
from clarion.domain.ids import new_id
from clarion.domain.models import NotificationStatus, Priority
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, finds_any, insert_ignoring_conflicts
from clarion.store.tables import digest_items, digest_windows, notifications, outbox

# A closed window (and what it held) is kept this long: a plan replayed after a crash
# (within a broker lease or the outbox's grace, seconds to minutes) finds its items held.
RETAIN = timedelta(days=1)
_WINDOW_KEY = ("tenant_id", "recipient_id", "channel", "category", "dkey")
_PRIORITY_ORDER = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}

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
    caller commits)."""
    groups: dict[WindowKey, list[Held]] = {}
    for item in items:
        groups.setdefault(item.window_key, []).append(item)
    ids: dict[WindowKey, str] = {}
    # Windows are locked in key order, so that planners holding overlapping sets of
    # windows at once never wait on each other in a cycle.
    for part in chunks(sorted(groups.items()), 500):
        ids.update(await _open(conn, part, now))
    rows = [
        {
            "window_id": ids[item.window_key],
            "delivery_id": item.delivery_id,
            "notification_id": item.notification_id,
            "created_at": now,
        }
        for item in items
    ]
    for part in chunks(rows, 1000):
        await conn.execute(insert_ignoring_conflicts(conn, digest_items), part)


async def _open(
    conn: AsyncConnection, groups: list[tuple[WindowKey, list[Held]]], now: datetime
) -> dict[WindowKey, str]:
    t = digest_windows
    values = [
        {
            "id": new_id("dgw"),
            **dict(zip(_WINDOW_KEY, key, strict=True)),
            "held": len(held),
            "opened_at": now,
            "closes_at": now + timedelta(seconds=held[0].window),
            "closed_at": None,
            "notification_id": None,
        }
        for key, held in groups
    ]
    stmt = _insert(conn)(t).values(values)
    full = t.c.held + stmt.excluded.held >= MAX_ITEMS
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_WINDOW_KEY),
        index_where=t.c.closed_at.is_(None),
        set_={
            "held": t.c.held + stmt.excluded.held,
            # A full window closes at the scheduler's next look.
            "closes_at": case((full, stmt.excluded.opened_at), else_=t.c.closes_at),
        },
    ).returning(t.c.id, *(t.c[name] for name in _WINDOW_KEY))
    found = await conn.execute(stmt)
    return {tuple(row[1:]): row[0] for row in found}


@dataclass(frozen=True, slots=True)
class Closed:
    notification_id: str
    tenant_id: str
    trace: str | None = None


# (tenant id, digest notification id, the held notifications' traceparents) → the
# digest's own traceparent (observability/tracing.py::digest).
Tracer = Callable[[str, str, Sequence[object]], str | None]


def _untraced(_tenant: str, _notification: str, _held: Sequence[object]) -> None:
    return None


_WINDOWS_DUE = (
    "SELECT EXISTS (SELECT 1 FROM digest_windows WHERE closed_at IS NULL AND closes_at <= $1)"
)


async def close_due(
    engine: AsyncEngine,
    now: datetime,
    limit: int,
    outbox_grace: float,
    trace: Tracer = _untraced,
    pg: PgPool | None = None,
) -> list[Closed]:
    """Close up to ``limit`` windows due at ``now``: one notification each (with its
    outbox row) summing up what it held, in the same transaction as the closing. A window
    whose every notification was cancelled closes with none. Each digest keeps the
    traceparent ``trace`` gives it (from the traces of what it holds). With none due,
    nothing is written (:func:`finds_any`)."""
    t = digest_windows
    stamp = utcnow()

    def due() -> Select[Any]:
        return select(t.c.id).where(t.c.closed_at.is_(None), t.c.closes_at <= now)

    if not await finds_any(engine, pg, due, _WINDOWS_DUE, now):
        return []
    async with write_tx(engine) as conn:
        query = (
            select(t)
            .where(t.c.closed_at.is_(None), t.c.closes_at <= now)
            .order_by(t.c.closes_at)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        windows = [dict(row) for row in (await conn.execute(query)).mappings()]
        if not windows:
            return []
        held = await _items(conn, [w["id"] for w in windows])
        notes = [
            _digest_row(window, held[window["id"]], stamp, trace)
            for window in windows
            if held.get(window["id"])
        ]
        for part in chunks(notes, 500):
            await conn.execute(insert_ignoring_conflicts(conn, notifications), part)
        later = stamp + timedelta(seconds=outbox_grace)
        boxes = [
            {"notification_id": n["id"], "tenant_id": n["tenant_id"], "available_at": later}
            for n in notes
        ]
        for part in chunks(boxes, 1000):
            await conn.execute(insert_ignoring_conflicts(conn, outbox), part)
        made = {n["digest_of"]: n["id"] for n in notes}
        await conn.execute(
            update(t)
            .where(t.c.id == bindparam("wid"))
            .values(closed_at=stamp, notification_id=bindparam("nid")),
            [{"wid": w["id"], "nid": made.get(w["id"])} for w in windows],
        )
    return [Closed(n["id"], n["tenant_id"], n["trace"]) for n in notes]


async def _items(conn: AsyncConnection, window_ids: list[str]) -> dict[str, list[Any]]:
    """Each window's notifications still standing (data, template, priority), in the order
    they were accepted (a planner batch may hold several in another order)."""
    i, n = digest_items, notifications
    query = (
        select(i.c.window_id, n.c.data, n.c.template, n.c.priority, n.c.trace)
        .join(n, n.c.id == i.c.notification_id)
        .where(i.c.window_id.in_(window_ids), n.c.status != NotificationStatus.CANCELLED)
        .order_by(i.c.window_id, n.c.created_at, n.c.id)
    )
    found: dict[str, list[Any]] = {}
    for row in await conn.execute(query):
        found.setdefault(row.window_id, []).append(row)
    return found


def _digest_row(
    window: dict[str, Any], held: list[Any], at: datetime, trace: Tracer
) -> dict[str, Any]:
    # The first held notification's template renders the digest; the digest goes on the
    # highest lane any of them had.
    priority = max((row.priority for row in held), key=lambda p: _PRIORITY_ORDER.get(p, 1))
    items = [row.data or {} for row in held]
    nid = digest_notification_id(window["id"])
    return {
        "id": nid,
        "tenant_id": window["tenant_id"],
        "template": held[0].template,
        "recipient_ids": [window["recipient_id"]],
        "data": {"items": items, "count": len(items)},
        "priority": priority,
        "channels": [window["channel"]],
        "send_at": None,
        "expires_at": None,
        "status": NotificationStatus.ACCEPTED,
        "idempotency_key": None,
        "request_hash": None,
        "created_at": at,
        "topic": None,
        "digest_of": window["id"],
        "trace": trace(window["tenant_id"], nid, [row.trace for row in held]),
    }


async def prune(engine: AsyncEngine, now: datetime, limit: int = 1000) -> int:
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
