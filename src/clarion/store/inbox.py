"""The in-app inbox: one row per in-app delivery, read and changed by its recipient.

A message's ``status`` (``unread``, ``read``, ``archived``) is derived from its timestamps
and kept in the row so that the feed of one status is an index range
(``ix_inbox_messages_status``), newest first by ``(created_at, id)``. A snoozed message
(``snoozed_until`` set) is out of the feed and the counts until
:func:`inbox_changes.wake_due` clears it. Changes are in ``inbox_changes.py``.
Every query is scoped by tenant and recipient: another recipient's message is not found.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store import sql  # noqa: F401 - SQLite renders INDEXED BY hints
from clarion.store.db import as_utc, utcnow
from clarion.store.pages import Position, newest_first
from clarion.store.sql import first_row
from clarion.store.tables import inbox_counters, inbox_messages

t = inbox_messages

STATUSES = ("unread", "read", "archived")
# The predicates of the partial indexes (store/tables.py), word for word: what is listed,
# and the feed without a status filter (everything not archived).
VISIBLE = text("snoozed_until IS NULL")
FEED = text("status IN ('unread', 'read') AND snoozed_until IS NULL")
RESUME_LIMIT = 500
# A recipient's counter row as live connections follow it: the counts, the last ``seq``
# given to a message (where "now" is in the arrival order) and the row's ``version``.
STATE_COLUMNS = ("unread", "unseen", "total", "seq", "version")
State = dict[str, int]


def stamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, as every API answer writes it."""
    moment = as_utc(value)
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def public(row: Any) -> dict[str, Any]:
    """A message as the inbox API shows it: plain JSON, timestamps as strings."""
    content = row.content if isinstance(row.content, dict) else {}
    return {
        "id": row.id,
        "title": content.get("title"),
        "body": content.get("body"),
        "action_url": content.get("action_url"),
        "data": content.get("data") or {},
        "category": row.category,
        "created_at": stamp(row.created_at),
        "read_at": stamp(row.read_at),
        "seen_at": stamp(row.seen_at),
        "archived_at": stamp(row.archived_at),
    }


def mine(tenant_id: str, recipient_id: str) -> ColumnElement[bool]:
    return (t.c.tenant_id == tenant_id) & (t.c.recipient_id == recipient_id)


def feed_query(
    tenant_id: str,
    recipient_id: str,
    *,
    status: str | None,
    cursor: Position | None,
    limit: int,
    sink: Callable[[Select[Any]], None] | None = None,
) -> Select[Any]:
    """One page of the feed as a query: a range of one index (tests check the plans)."""
    query = select(t).where(mine(tenant_id, recipient_id))
    if status is None:
        query, index = query.where(FEED), "ix_inbox_messages_feed"
    elif status == "all":
        query, index = query.where(t.c.snoozed_until.is_(None)), "ix_inbox_messages_all"
    else:
        query, index = query.where(VISIBLE, t.c.status == status), "ix_inbox_messages_status"
    # SQLite without statistics may take another index that also avoids the sort but reads
    # past every archived message: named. PostgreSQL chooses by its statistics.
    query = query.with_hint(t, f"INDEXED BY {index}", "sqlite")
    query = newest_first(query, t.c.created_at, t.c.id, cursor, limit + 1)
    if sink is not None:
        sink(query)
    return query


async def page(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    *,
    status: str | None,
    cursor: Position | None,
    limit: int,
) -> tuple[list[dict[str, Any]], Position | None]:
    """One page of the feed, newest first, and the cursor of the next page if there is one."""
    query = feed_query(tenant_id, recipient_id, status=status, cursor=cursor, limit=limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    following = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        following = Position(as_utc(last.created_at) or utcnow(), last.id)
    return [public(r) for r in rows], following


async def counts(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, int]:
    """``unread``, ``unseen`` and ``total`` of the feed (archived and snoozed left out): one
    row of ``inbox_counters``, kept by every change (``inbox_changes.py``)."""
    c = inbox_counters
    query = select(c.c.unread, c.c.unseen, c.c.total).where(
        c.c.tenant_id == tenant_id, c.c.recipient_id == recipient_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return {"unread": 0, "unseen": 0, "total": 0}
    return {"unread": int(row.unread), "unseen": int(row.unseen), "total": int(row.total)}


async def recount(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, int]:
    """The counts computed from the messages themselves (what the counters must equal)."""
    query = select(
        func.count(),
        func.coalesce(func.sum(case((t.c.status == "unread", 1), else_=0)), 0),
        func.coalesce(func.sum(case((t.c.seen_at.is_(None), 1), else_=0)), 0),
    ).where(mine(tenant_id, recipient_id), FEED)
    async with engine.connect() as conn:
        total, unread, unseen = (await conn.execute(query)).one()
    return {"unread": int(unread), "unseen": int(unseen), "total": int(total)}


async def state(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> State:
    """The recipient's counter row (``STATE_COLUMNS``), zeros before its first message."""
    c = inbox_counters
    query = select(*(c.c[n] for n in STATE_COLUMNS)).where(
        c.c.tenant_id == tenant_id, c.c.recipient_id == recipient_id
    )
    row = await first_row(engine, query)
    return {n: 0 if row is None else int(row[n]) for n in STATE_COLUMNS}


async def position(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str
) -> int | None:
    """A message's place in the arrival order (its ``seq``), to resume after it; None if
    the recipient has no such message."""
    query = select(t.c.seq).where(mine(tenant_id, recipient_id), t.c.id == message_id)
    async with engine.connect() as conn:
        found = (await conn.execute(query)).scalar()
    return None if found is None else int(found)


async def since(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    after: int,
    limit: int = RESUME_LIMIT,
) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, message)`` of the messages that arrived after ``seq`` ``after`` (0: all),
    in arrival order, snoozed ones left out: what a reconnecting client missed. A message
    back from snooze arrived again when it came back. At most ``limit`` + 1 (the caller
    tells the client to reload when there are more)."""
    query = (
        select(t)
        .where(mine(tenant_id, recipient_id), t.c.seq > after, VISIBLE)
        .order_by(t.c.seq.asc())
        .limit(limit + 1)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(int(r.seq), public(r)) for r in rows]
