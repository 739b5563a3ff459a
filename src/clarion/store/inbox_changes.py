"""Every change to an inbox, and the recipient's counters kept in the same transaction.

A message counts in ``total`` while it is in the feed (``unread`` or ``read``, not
snoozed), in ``unread`` while it is unread there, in ``unseen`` while it is unseen there.
Each change reads the rows it changes (locked on PostgreSQL: ``FOR UPDATE``), works out
how each one's contribution moves, and adds the difference to ``inbox_counters`` with one
upsert. Message rows are always locked before the counter row, and counter rows in key
order, so two changes never wait on each other in a cycle.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.db import utcnow, write_tx
from clarion.store.inbox import mine, public, stamp
from clarion.store.sql import chunks, insert_ignoring_conflicts
from clarion.store.tables import inbox_counters, inbox_messages, notifications

t = inbox_messages
ACTIONS = ("read", "unread", "seen", "archive", "unarchive")
Delta = tuple[int, int, int]  # unread, unseen, total
Key = tuple[str, str]


def contribution(row: dict[str, Any]) -> Delta:
    """What one message adds to its recipient's (unread, unseen, total)."""
    if row["status"] not in ("unread", "read") or row["snoozed_until"] is not None:
        return (0, 0, 0)
    return (int(row["status"] == "unread"), int(row["seen_at"] is None), 1)


def _minus(after: Delta, before: Delta) -> Delta:
    return (after[0] - before[0], after[1] - before[1], after[2] - before[2])


async def bump(conn: AsyncConnection, deltas: dict[Key, Delta]) -> None:
    """Add each recipient's delta to its counters (one statement, in key order)."""
    params = [
        {"tenant_id": k[0], "recipient_id": k[1], "unread": d[0], "unseen": d[1], "total": d[2]}
        for k, d in sorted(deltas.items())
        if d != (0, 0, 0)
    ]
    if not params:
        return
    c = inbox_counters
    stmt: Any = postgresql.insert(c) if conn.dialect.name == "postgresql" else sqlite.insert(c)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "recipient_id"],
        set_={name: c.c[name] + stmt.excluded[name] for name in ("unread", "unseen", "total")},
    )
    await conn.execute(stmt, params)


def _locked(conn: AsyncConnection, query: Select[Any]) -> Select[Any]:
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


async def insert(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store new messages; returns those that were not stored already (a repeated send of
    the same delivery inserts nothing), as ``{"tenant_id", "recipient_id", "message"}``."""
    now = utcnow()
    values = [_new_row(r, now) for r in rows]
    async with write_tx(engine) as conn:
        stmt = insert_ignoring_conflicts(conn, t).returning(t.c.id)
        fresh = set((await conn.execute(stmt, values)).scalars())
        stored = [v for v in values if v["id"] in fresh]
        added = Counter((v["tenant_id"], v["recipient_id"]) for v in stored)
        await bump(conn, {key: (n, n, n) for key, n in added.items()})
    return [
        {"tenant_id": v["tenant_id"], "recipient_id": v["recipient_id"], "message": public(_Row(v))}
        for v in stored
    ]


def _new_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    values = {"category": None, "notification_id": None, **row}
    fallback = values.pop("fallback", None)
    return {
        **values,
        "created_at": now,
        "status": "unread",
        "read_at": None,
        "seen_at": None,
        "archived_at": None,
        "snoozed_until": None,
        "fallback_due": now + timedelta(seconds=fallback[0]) if fallback else None,
        "fallback_channel": fallback[1] if fallback else None,
    }


class _Row:
    """A dict read as a row (``public`` reads attributes)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _after(action: str, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The columns that ``action`` sets on ``row``."""
    archived = row["archived_at"] is not None
    if action == "read":
        return {
            "read_at": row["read_at"] or now,
            "seen_at": row["seen_at"] or now,
            "status": "archived" if archived else "read",
            "fallback_due": None,
        }
    if action == "unread":
        return {"read_at": None, "status": "archived" if archived else "unread"}
    if action == "seen":
        return {"seen_at": row["seen_at"] or now, "fallback_due": None}
    if action == "archive":
        return {"archived_at": row["archived_at"] or now, "status": "archived"}
    if action == "unarchive":
        return {"archived_at": None, "status": "unread" if row["read_at"] is None else "read"}
    raise ValueError(f"unknown action {action!r}")


async def _one(
    conn: AsyncConnection, tenant_id: str, recipient_id: str, message_id: str
) -> dict[str, Any] | None:
    query = select(t).where(mine(tenant_id, recipient_id), t.c.id == message_id)
    found = (await conn.execute(_locked(conn, query))).mappings().first()
    return dict(found) if found is not None else None


async def change(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, action: str
) -> dict[str, Any] | None:
    """Apply ``action`` to one message; the message as it is after, or None if the
    recipient has no such message."""
    return await _set(
        engine, tenant_id, recipient_id, message_id, lambda r: _after(action, r, utcnow())
    )


async def snooze(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, until: datetime
) -> dict[str, Any] | None:
    """Hide the message from the feed and the counts until ``until``."""
    found = await _set(
        engine, tenant_id, recipient_id, message_id, lambda _: {"snoozed_until": until}
    )
    if found is not None:
        found["snoozed_until"] = stamp(until)
    return found


async def _set(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    message_id: str,
    changes: Any,
) -> dict[str, Any] | None:
    async with write_tx(engine) as conn:
        row = await _one(conn, tenant_id, recipient_id, message_id)
        if row is None:
            return None
        values = changes(row)
        after = {**row, **values}
        await conn.execute(update(t).where(t.c.id == message_id).values(values))
        await bump(
            conn, {(tenant_id, recipient_id): _minus(contribution(after), contribution(row))}
        )
    return public(_Row(after))


async def change_all(engine: AsyncEngine, tenant_id: str, recipient_id: str, action: str) -> int:
    """``read``: every unread message of the feed is read; ``archive``: every read one is
    archived. Returns how many changed."""
    source = {"read": "unread", "archive": "read"}[action]
    now = utcnow()
    query = select(t.c.id, t.c.status, t.c.seen_at, t.c.read_at, t.c.archived_at, t.c.snoozed_until)
    query = query.where(
        mine(tenant_id, recipient_id), t.c.status == source, t.c.snoozed_until.is_(None)
    )
    async with write_tx(engine) as conn:
        rows = [dict(r) for r in (await conn.execute(_locked(conn, query))).mappings()]
        total: Delta = (0, 0, 0)
        for part in chunks(rows, 1000):
            ids = [r["id"] for r in part]
            if action == "read":
                # Read also means seen: those seen before keep their time.
                base = update(t).where(t.c.id.in_(ids))
                await conn.execute(base.values(read_at=now, status="read", fallback_due=None))
                await conn.execute(base.where(t.c.seen_at.is_(None)).values(seen_at=now))
            else:
                await conn.execute(
                    update(t).where(t.c.id.in_(ids)).values(archived_at=now, status="archived")
                )
        for row in rows:
            after = {**row, **_after(action, row, now)}
            delta = _minus(contribution(after), contribution(row))
            total = (total[0] + delta[0], total[1] + delta[1], total[2] + delta[2])
        await bump(conn, {(tenant_id, recipient_id): total})
    return len(rows)


async def wake_due(engine: AsyncEngine, limit: int = 500) -> list[dict[str, Any]]:
    """Bring back snoozed messages whose time has come. Each is claimed by one process
    (the UPDATE clears ``snoozed_until`` only where it is still due), and returned as
    ``{"tenant_id", "recipient_id", "message"}`` for the live push."""
    now = utcnow()
    due = select(t.c.id).where(t.c.snoozed_until <= now).limit(limit)
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    async with write_tx(engine) as conn:
        rows = (
            (
                await conn.execute(
                    update(t)
                    .where(t.c.id.in_(due.scalar_subquery()), t.c.snoozed_until <= now)
                    .values(snoozed_until=None)
                    .returning(*t.c)
                )
            )
            .mappings()
            .all()
        )
        deltas: dict[Key, Delta] = {}
        for row in rows:
            key = (row["tenant_id"], row["recipient_id"])
            d = contribution(dict(row))
            old = deltas.get(key, (0, 0, 0))
            deltas[key] = (old[0] + d[0], old[1] + d[1], old[2] + d[2])
        await bump(conn, deltas)
    return [
        {
            "tenant_id": r["tenant_id"],
            "recipient_id": r["recipient_id"],
            "message": public(_Row(dict(r))),
        }
        for r in rows
    ]


async def due_fallbacks(engine: AsyncEngine, limit: int = 500) -> list[dict[str, Any]]:
    """Unseen messages whose fallback is due, with what their notification asked for
    (``template``, ``data``, ``priority``; None when the notification is gone)."""
    n = notifications
    query = (
        select(
            t.c.id,
            t.c.tenant_id,
            t.c.recipient_id,
            t.c.fallback_channel,
            n.c.template,
            n.c.data,
            n.c.priority,
        )
        .select_from(t.outerjoin(n, n.c.id == t.c.notification_id))
        .where(t.c.fallback_due <= utcnow(), t.c.seen_at.is_(None))
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def fallbacks_done(engine: AsyncEngine, ids: list[str]) -> None:
    async with write_tx(engine) as conn:
        for part in chunks(ids, 1000):
            await conn.execute(update(t).where(t.c.id.in_(part)).values(fallback_due=None))
