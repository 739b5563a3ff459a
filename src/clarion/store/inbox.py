"""The in-app inbox: one row per in-app delivery, read and changed by its recipient.

A message's ``status`` (``unread``, ``read``, ``archived``) is derived from its timestamps
and kept in the row so that the feed of one status is an index range
(``ix_inbox_messages_status``), newest first by ``(created_at, id)``. A snoozed message
(``snoozed_until`` set) is out of the feed and the counts until :func:`wake_due` clears it.
Every query is scoped by tenant and recipient: another recipient's message is not found.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import insert_ignoring_conflicts
from clarion.store.tables import inbox_messages

t = inbox_messages

STATUSES = ("unread", "read", "archived")
# The feed without a status filter: everything not archived.
_FEED = ("unread", "read")
RESUME_LIMIT = 500


def stamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, as every API answer writes it."""
    moment = as_utc(value)
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the newest-first feed: the last message's (created_at, id)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ``ValueError`` for a cursor this module did not make."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            moment_text, _, ident = raw.partition("|")
            moment = as_utc(datetime.fromisoformat(moment_text))
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError("not a cursor from this list") from exc
        if moment is None or not ident or len(ident) > 40:
            raise ValueError("not a cursor from this list")
        return cls(moment, ident)


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


def _mine(tenant_id: str, recipient_id: str) -> ColumnElement[bool]:
    return (t.c.tenant_id == tenant_id) & (t.c.recipient_id == recipient_id)


async def insert(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store new messages; returns those that were not stored already (a repeated send of
    the same delivery inserts nothing), as ``{"tenant_id", "recipient_id", "message"}``."""
    now = utcnow()
    values = [{**r, "created_at": now, "status": "unread"} for r in rows]
    async with write_tx(engine) as conn:
        inserted = (
            await conn.execute(
                insert_ignoring_conflicts(conn, t).returning(t.c.id),
                values,
            )
        ).scalars()
        fresh = set(inserted)
    out = []
    for value in values:
        if value["id"] in fresh:
            row = _Row({**value, "read_at": None, "seen_at": None, "archived_at": None})
            out.append(
                {
                    "tenant_id": value["tenant_id"],
                    "recipient_id": value["recipient_id"],
                    "message": public(row),
                }
            )
    return out


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self.__dict__.setdefault("category", None)


async def page(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    *,
    status: str | None,
    cursor: Cursor | None,
    limit: int,
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of the feed, newest first, and the cursor of the next page if there is one."""
    query = select(t).where(_mine(tenant_id, recipient_id), t.c.snoozed_until.is_(None))
    if status is None:
        query = query.where(t.c.status.in_(_FEED))
    elif status != "all":
        query = query.where(t.c.status == status)
    if cursor is not None:
        query = query.where(tuple_(t.c.created_at, t.c.id) < tuple_(cursor.created_at, cursor.id))
    query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    following = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        following = Cursor(as_utc(last.created_at) or utcnow(), last.id)
    return [public(r) for r in rows], following


async def counts(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, int]:
    """``unread``, ``unseen`` and ``total`` of the feed (archived and snoozed left out)."""
    query = select(
        func.count(),
        func.coalesce(func.sum(case((t.c.status == "unread", 1), else_=0)), 0),
        func.coalesce(func.sum(case((t.c.seen_at.is_(None), 1), else_=0)), 0),
    ).where(_mine(tenant_id, recipient_id), t.c.status.in_(_FEED), t.c.snoozed_until.is_(None))
    async with engine.connect() as conn:
        total, unread, unseen = (await conn.execute(query)).one()
    return {"unread": int(unread), "unseen": int(unseen), "total": int(total)}


def _changes(action: str, now: datetime) -> dict[str, Any]:
    archived = t.c.archived_at.is_not(None)
    if action == "read":
        return {
            "read_at": func.coalesce(t.c.read_at, now),
            "seen_at": func.coalesce(t.c.seen_at, now),
            "status": case((archived, "archived"), else_="read"),
        }
    if action == "unread":
        return {"read_at": None, "status": case((archived, "archived"), else_="unread")}
    if action == "seen":
        return {"seen_at": func.coalesce(t.c.seen_at, now)}
    if action == "archive":
        return {"archived_at": func.coalesce(t.c.archived_at, now), "status": "archived"}
    if action == "unarchive":
        return {
            "archived_at": None,
            "status": case((t.c.read_at.is_(None), "unread"), else_="read"),
        }
    raise ValueError(f"unknown action {action!r}")


ACTIONS = ("read", "unread", "seen", "archive", "unarchive")


async def change(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, action: str
) -> dict[str, Any] | None:
    """Apply ``action`` to one message; the message as it is after, or None if the
    recipient has no such message."""
    values = _changes(action, utcnow())
    async with write_tx(engine) as conn:
        await conn.execute(
            update(t).where(_mine(tenant_id, recipient_id), t.c.id == message_id).values(values)
        )
        return await _get(conn, tenant_id, recipient_id, message_id)


async def _get(
    conn: AsyncConnection, tenant_id: str, recipient_id: str, message_id: str
) -> dict[str, Any] | None:
    row = (
        await conn.execute(select(t).where(_mine(tenant_id, recipient_id), t.c.id == message_id))
    ).first()
    return public(row) if row is not None else None


async def change_all(engine: AsyncEngine, tenant_id: str, recipient_id: str, action: str) -> int:
    """``read``: every unread message of the feed is read; ``archive``: every read one is
    archived. Returns how many changed."""
    source = {"read": "unread", "archive": "read"}[action]
    async with write_tx(engine) as conn:
        result = await conn.execute(
            update(t)
            .where(
                _mine(tenant_id, recipient_id),
                t.c.status == source,
                t.c.snoozed_until.is_(None),
            )
            .values(_changes(action, utcnow()))
        )
    return int(result.rowcount or 0)


async def snooze(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, until: datetime
) -> dict[str, Any] | None:
    async with write_tx(engine) as conn:
        result = await conn.execute(
            update(t)
            .where(_mine(tenant_id, recipient_id), t.c.id == message_id)
            .values(snoozed_until=until)
        )
        if not result.rowcount:
            return None
        found = await _get(conn, tenant_id, recipient_id, message_id)
    if found is not None:
        found["snoozed_until"] = stamp(until)
    return found


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
            await conn.execute(
                update(t)
                .where(t.c.id.in_(due.scalar_subquery()), t.c.snoozed_until <= now)
                .values(snoozed_until=None)
                .returning(*t.c)
            )
        ).all()
    return [
        {"tenant_id": r.tenant_id, "recipient_id": r.recipient_id, "message": public(r)}
        for r in rows
    ]


async def position(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str
) -> Cursor | None:
    """Where a message sits in the feed, to resume after it; None if it is not there."""
    query = select(t.c.created_at, t.c.id).where(
        _mine(tenant_id, recipient_id), t.c.id == message_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return Cursor(as_utc(row.created_at) or utcnow(), row.id)


async def newest(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> Cursor | None:
    query = (
        select(t.c.created_at, t.c.id)
        .where(_mine(tenant_id, recipient_id))
        .order_by(t.c.created_at.desc(), t.c.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return None if row is None else Cursor(as_utc(row.created_at) or utcnow(), row.id)


async def since(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    after: Cursor | None,
    limit: int = RESUME_LIMIT,
) -> list[dict[str, Any]]:
    """Messages newer than ``after`` (all of them when None), oldest first, snoozed ones
    left out: what a reconnecting client missed. At most ``limit`` + 1 (the caller tells
    the client to reload when there are more)."""
    query = select(t).where(_mine(tenant_id, recipient_id), t.c.snoozed_until.is_(None))
    if after is not None:
        query = query.where(tuple_(t.c.created_at, t.c.id) > tuple_(after.created_at, after.id))
    query = query.order_by(t.c.created_at.asc(), t.c.id.asc()).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [public(r) for r in rows]
