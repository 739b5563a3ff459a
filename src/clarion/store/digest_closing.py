"""The closing of category digest windows, by their carriers (the runs of the built-in
workflow ``~digest``, woken by the run engine: pipeline/runs.py).

In one transaction (:func:`close_carried`): the windows are locked (PostgreSQL, in key
order, as a planner holding items locks them: a planner adding to a window is waited for,
and its items are in the digest), then the carriers' runs, so that only those still held
under the lease they were advanced under count; each due window's items are read, one
notification inserted for it with its outbox row (its id derives from the window's, ``ON
CONFLICT DO NOTHING``), the window marked closed, and the carriers stored completed. An
advancer that dies before the commit leaves everything as it was, and the carrier is taken
again when its lease ends; after it, nothing is done twice, and the outbox row brings the
notification to the planner if the advancer died before publishing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.digests import digest_notification_id
from clarion.domain.models import NotificationStatus, Priority
from clarion.store import runs as run_store
from clarion.store.db import write_tx
from clarion.store.digests import WINDOW_KEY, utc
from clarion.store.sql import chunks, insert_ignoring_conflicts
from clarion.store.tables import digest_items, digest_windows, notifications, outbox

_PRIORITY_ORDER = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


@dataclass(frozen=True, slots=True)
class Closed:
    """A digest notification made: its id, tenant and traceparent."""

    notification_id: str
    tenant_id: str
    trace: str | None = None


# (tenant id, digest notification id, the held notifications' traceparents) → the
# digest's own traceparent (observability/tracing.py::digest).
Tracer = Callable[[str, str, Sequence[object]], str | None]


def _untraced(_tenant: str, _notification: str, _held: Sequence[object]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Closing:
    """A carrier run advanced under its lease's ``turn``, and the window it carries."""

    run_id: str
    turn: int
    window_id: str


@dataclass(frozen=True, slots=True)
class Waits:
    """The window is not due: it closes at ``closes_at``."""

    closes_at: datetime


@dataclass(frozen=True, slots=True)
class Shut:
    """The window is closed: it summed up ``count`` notifications (none: every one was
    cancelled, and no digest was made); ``closes_at`` is when it was due."""

    count: int
    closes_at: datetime | None


Outcome = Waits | Shut
# What the carriers' rows become, given the outcomes (rows as store/runs.py ``save`` takes).
Settle = Callable[[dict[str, Outcome]], list[dict[str, Any]]]


async def close_carried(
    engine: AsyncEngine,
    closing: Sequence[Closing],
    now: datetime,
    outbox_grace: float,
    rows_of: Settle,
    trace: Tracer = _untraced,
) -> tuple[dict[str, Outcome], list[Closed]]:
    """Close the windows of these carriers that are due at ``now``, and store the carriers'
    rows ``rows_of`` makes of the outcomes, in one transaction: each window's digest
    notification (its id derived from the window's, with its outbox row, ``ON CONFLICT DO
    NOTHING``) summing up what it holds, and the window marked closed. A window whose every
    notification was cancelled closes with none. Only the carriers still held under their
    turn count; a carrier missing from the outcomes was taken by another advancer (its
    lease ran out) or erased, and nothing was done for it. The windows are locked first (in
    key order, as a planner holding items locks them), then the runs (PostgreSQL): a
    planner adding to a window is waited for, and its items are in the digest. Each digest
    keeps the traceparent ``trace`` gives it (from the traces of what it holds)."""
    if not closing:
        return {}, []
    async with write_tx(engine) as conn:
        windows = await _windows(conn, sorted({c.window_id for c in closing}))
        held = await run_store.owned(conn, {c.run_id: c.turn for c in closing})
        outcomes: dict[str, Outcome] = {}
        ending: dict[str, dict[str, Any]] = {}
        for item in closing:
            if item.run_id not in held:
                continue
            window = windows.get(item.window_id)
            if window is None:
                # Gone (a window leaves with its carrier, or a day after it closed): there
                # is nothing left to close.
                outcomes[item.run_id] = Shut(0, None)
                continue
            closes_at = utc(window["closes_at"])
            if window["closed_at"] is None and closes_at > now:
                outcomes[item.run_id] = Waits(closes_at)
            else:
                ending[item.run_id] = window
        items = await _items(conn, sorted({w["id"] for w in ending.values()}))
        due = {w["id"]: w for w in ending.values() if w["closed_at"] is None}
        made = await _close(conn, list(due.values()), items, now, outbox_grace, trace)
        for rid, window in ending.items():
            outcomes[rid] = Shut(len(items.get(window["id"], ())), utc(window["closes_at"]))
        await run_store.save_in(conn, rows_of(outcomes))
    return outcomes, made


async def _windows(conn: AsyncConnection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """These windows, locked on PostgreSQL until the transaction ends, in key order: one
    statement (a wake's batch at most), so that the order holds across all of them."""
    t = digest_windows
    query = select(t).where(t.c.id.in_(ids)).order_by(*(t.c[name] for name in WINDOW_KEY))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {row["id"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def _close(
    conn: AsyncConnection,
    windows: list[dict[str, Any]],
    held: dict[str, list[Any]],
    now: datetime,
    outbox_grace: float,
    trace: Tracer,
) -> list[Closed]:
    """Make each window's digest notification with its outbox row (none for a window with
    nothing standing) and mark the windows closed."""
    if not windows:
        return []
    t = digest_windows
    notes = [
        _digest_row(window, held[window["id"]], now, trace)
        for window in windows
        if held.get(window["id"])
    ]
    for part in chunks(notes, 500):
        await conn.execute(insert_ignoring_conflicts(conn, notifications), part)
    later = now + timedelta(seconds=outbox_grace)
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
        .values(closed_at=now, notification_id=bindparam("nid")),
        [{"wid": w["id"], "nid": made.get(w["id"])} for w in windows],
    )
    return [Closed(n["id"], n["tenant_id"], n["trace"]) for n in notes]


async def _items(conn: AsyncConnection, window_ids: list[str]) -> dict[str, list[Any]]:
    """Each window's notifications still standing (data, template, priority), in the order
    they were accepted (a planner batch may hold several in another order)."""
    if not window_ids:
        return {}
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
