"""Topic memberships: subscribe and unsubscribe in bulk, count, list, and the chunks of
subscribers the planner reads for a topic send.

A topic exists from its creation until it is deleted, with or without subscribers; it is
created explicitly or by its first subscription, and a send to a topic that does not exist
is refused. Subscribing inserts from the recipients table (``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``), so a membership always names a stored recipient, even when an
erasure runs at the same moment, and repeating a call adds nothing. Creating and deleting
a topic are recorded in the audit log; memberships are the tenant's data and are not.

A topic's size is a column of its row, moved by each change to its memberships in that
change's transaction (the row is updated last, so the lock it takes is held only until the
commit): a call answers the size after it without counting a large topic's members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, delete, func, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import chunks
from clarion.store.tables import recipients, topic_subscribers, topics

MAX_PER_CALL = 10_000
_PART = 1000  # ids per statement: bounds SQLite's variables and one statement's size

# On PostgreSQL a call's ids go in one statement, as an array, each looked up by the
# recipients' primary key (the lateral subquery, kept apart by ``OFFSET 0``, is probed once
# per id). Written as ``id IN (...)``, without fresh statistics (a recipients table just
# loaded in bulk, before its first ANALYZE) the list was planned as a scan of the tenant's
# every recipient, filtered by it: at a million recipients, seconds for each thousand ids.
# The ids found and the number inserted come back together.
_PG_SUBSCRIBE = text(
    "WITH found AS ("
    " SELECT r.id FROM unnest(CAST(:ids AS text[])) AS u(id)"
    " CROSS JOIN LATERAL (SELECT id FROM recipients"
    "  WHERE tenant_id = :tenant AND id = u.id OFFSET 0) AS r),"
    " added AS (INSERT INTO topic_subscribers (tenant_id, topic, recipient_id, created_at)"
    "  SELECT :tenant, :topic, id, CAST(:at AS timestamptz) FROM found"
    "  ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM added) AS added, ARRAY(SELECT id FROM found) AS known"
)
# Removal the same way: each id's membership found by its key, then removed by its row's
# address (a joined or ``IN`` delete was planned as a scan of the whole topic).
_PG_UNSUBSCRIBE = text(
    "DELETE FROM topic_subscribers WHERE ctid = ANY(ARRAY("
    " SELECT m.ctid FROM unnest(CAST(:ids AS text[])) AS u(id)"
    " CROSS JOIN LATERAL (SELECT ctid FROM topic_subscribers"
    "  WHERE tenant_id = :tenant AND topic = :topic AND recipient_id = u.id OFFSET 0) AS m))"
)

t = topic_subscribers


@dataclass(frozen=True, slots=True)
class Change:
    changed: int  # memberships added or removed
    unknown: list[str]  # ids with no recipient (subscribing only)
    subscribers: int  # the topic's size after the change


async def count(conn: AsyncConnection, tenant_id: str, topic: str) -> int:
    """The topic's size (0 when there is no such topic)."""
    query = select(topics.c.subscribers).where(
        topics.c.tenant_id == tenant_id, topics.c.name == topic
    )
    return int((await conn.execute(query)).scalar() or 0)


async def _moved(conn: AsyncConnection, tenant_id: str, names: Sequence[str], by: int) -> None:
    """Move the size of these topics by ``by`` (in name order, one statement)."""
    if by and names:
        await conn.execute(
            update(topics)
            .where(topics.c.tenant_id == tenant_id, topics.c.name.in_(sorted(set(names))))
            .values(subscribers=topics.c.subscribers + by)
        )


async def size(engine: AsyncEngine, tenant_id: str, topic: str) -> int | None:
    """The topic's number of subscribers, or None when there is no such topic."""
    async with engine.connect() as conn:
        if not await exists(conn, tenant_id, topic):
            return None
        return await count(conn, tenant_id, topic)


def _insert(conn: AsyncConnection, table: Any = t) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def exists(conn: AsyncConnection, tenant_id: str, topic: str) -> bool:
    query = select(topics.c.name).where(topics.c.tenant_id == tenant_id, topics.c.name == topic)
    return (await conn.execute(query)).first() is not None


async def _create(conn: AsyncConnection, tenant_id: str, topic: str, actor: str) -> bool:
    """Create the topic unless it exists (with its audit row); whether this created it."""
    stmt = (
        _insert(conn, topics)
        .values(tenant_id=tenant_id, name=topic, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    if max((await conn.execute(stmt)).rowcount, 0) == 0:
        return False
    await audit.record(
        conn, audit.Change(tenant_id, actor, audit.Resource.TOPIC, topic, audit.Action.CREATE)
    )
    return True


async def create(engine: AsyncEngine, tenant_id: str, topic: str, actor: str) -> tuple[bool, int]:
    """Create the topic if it does not exist: (whether this created it, its size)."""
    async with write_tx(engine) as conn:
        created = await _create(conn, tenant_id, topic, actor)
        return created, await count(conn, tenant_id, topic)


async def delete_topic(engine: AsyncEngine, tenant_id: str, topic: str, actor: str) -> int | None:
    """Delete the topic and its memberships: the number of subscribers it had, or None
    when there was no such topic."""
    async with write_tx(engine) as conn:
        gone = await conn.execute(
            delete(topics).where(topics.c.tenant_id == tenant_id, topics.c.name == topic)
        )
        if max(gone.rowcount, 0) == 0:
            return None
        removed = await conn.execute(
            delete(t).where(t.c.tenant_id == tenant_id, t.c.topic == topic)
        )
        had = max(removed.rowcount, 0)
        await audit.record(
            conn,
            audit.Change(
                tenant_id,
                actor,
                audit.Resource.TOPIC,
                topic,
                audit.Action.DELETE,
                {"subscribers": {"from": had}},
            ),
        )
    return had


async def subscribe(
    engine: AsyncEngine, tenant_id: str, topic: str, recipient_ids: Sequence[str], actor: str
) -> Change:
    """Add the recipients to the topic (creating it if need be); ids with no recipient are
    reported, not added."""
    ids = list(dict.fromkeys(recipient_ids))
    now = utcnow()
    async with write_tx(engine) as conn:
        await _create(conn, tenant_id, topic, actor)
        if conn.dialect.name == "postgresql":
            values = {"ids": ids, "tenant": tenant_id, "topic": topic, "at": now}
            row = (await conn.execute(_PG_SUBSCRIBE, values)).one()
            added, known = int(row.added), set(row.known)
        else:
            added, known = await _subscribe_listed(conn, tenant_id, topic, ids, now)
        await _moved(conn, tenant_id, [topic], added)
        total = await count(conn, tenant_id, topic)
    return Change(added, [rid for rid in ids if rid not in known], total)


async def _subscribe_listed(
    conn: AsyncConnection, tenant_id: str, topic: str, ids: list[str], now: datetime
) -> tuple[int, set[str]]:
    """SQLite's subscription: the ids a part at a time, as ``IN`` lists (how many were
    added, and the ids of stored recipients)."""
    added, known = 0, set[str]()
    r = recipients
    for part in chunks(ids, _PART):
        mine = (r.c.tenant_id == tenant_id) & r.c.id.in_(part)
        known.update((await conn.execute(select(r.c.id).where(mine))).scalars())
        source = select(
            r.c.tenant_id, literal(topic), r.c.id, literal(now, type_=DateTime(timezone=True))
        ).where(mine)
        stmt = (
            _insert(conn)
            .from_select(["tenant_id", "topic", "recipient_id", "created_at"], source)
            .on_conflict_do_nothing()
        )
        added += max((await conn.execute(stmt)).rowcount, 0)
    return added, known


async def unsubscribe(
    engine: AsyncEngine, tenant_id: str, topic: str, recipient_ids: Sequence[str]
) -> Change:
    ids = list(dict.fromkeys(recipient_ids))
    removed = 0
    async with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            values = {"ids": ids, "tenant": tenant_id, "topic": topic}
            removed = max((await conn.execute(_PG_UNSUBSCRIBE, values)).rowcount, 0)
        else:
            for part in chunks(ids, _PART):
                where = (t.c.tenant_id == tenant_id, t.c.topic == topic, t.c.recipient_id.in_(part))
                removed += max((await conn.execute(delete(t).where(*where))).rowcount, 0)
        await _moved(conn, tenant_id, [topic], -removed)
        total = await count(conn, tenant_id, topic)
    return Change(removed, [], total)


async def page(
    engine: AsyncEngine, tenant_id: str, topic: str, after: str | None, limit: int
) -> list[dict[str, Any]] | None:
    """Subscribers in recipient id order, after the cursor; up to ``limit`` rows (None: no
    such topic)."""
    query = select(t.c.recipient_id, t.c.created_at).where(
        t.c.tenant_id == tenant_id, t.c.topic == topic
    )
    if after is not None:
        query = query.where(t.c.recipient_id > after)
    query = query.order_by(t.c.recipient_id).limit(limit)
    async with engine.connect() as conn:
        if not await exists(conn, tenant_id, topic):
            return None
        rows = (await conn.execute(query)).all()
    return [{"recipient_id": row[0], "subscribed_at": as_utc(row[1])} for row in rows]


async def of_recipient(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> list[str]:
    query = (
        select(t.c.topic)
        .where(t.c.tenant_id == tenant_id, t.c.recipient_id == recipient_id)
        .order_by(t.c.topic)
    )
    return list((await conn.execute(query)).scalars())


async def forget_recipient(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    """Erasure: the recipient's memberships, each of its topics one subscriber smaller."""
    gone = await conn.execute(
        delete(t)
        .where(t.c.tenant_id == tenant_id, t.c.recipient_id == recipient_id)
        .returning(t.c.topic)
    )
    await _moved(conn, tenant_id, list(gone.scalars()), -1)


def chunk_query(tenant_id: str, topic: str, after: str | None, last: str | None, limit: int) -> Any:
    """The next chunk of a topic's subscribers for the planner: their recipient rows, in
    id order, after ``after`` and up to ``last`` (inclusive; no end when None)."""
    r = recipients
    query = (
        select(r)
        .join(t, (t.c.tenant_id == r.c.tenant_id) & (t.c.recipient_id == r.c.id))
        .where(t.c.tenant_id == tenant_id, t.c.topic == topic, t.c.recipient_id > (after or ""))
        .order_by(t.c.recipient_id)
        .limit(limit)
    )
    return query if last is None else query.where(t.c.recipient_id <= last)


# The same on asyncpg (the planner's reads there are fixed statements); "" before the first
# chunk (recipient ids are never empty).
PG_CHUNK = (
    "SELECT r.* FROM topic_subscribers AS s JOIN recipients AS r "
    "ON r.tenant_id = s.tenant_id AND r.id = s.recipient_id "
    "WHERE s.tenant_id = $1 AND s.topic = $2 AND s.recipient_id > $3 "
    "AND ($5::text IS NULL OR s.recipient_id <= $5) "
    "ORDER BY s.recipient_id LIMIT $4"
)


def boundaries_query(tenant_id: str, topic: str, step: int, count: int) -> Any:
    """The recipient ids that end each of ``count`` stripes of ``step`` subscribers, in id
    order: every ``step``-th subscriber's id (one pass over the topic's index)."""
    numbered = (
        select(
            t.c.recipient_id,
            func.row_number().over(order_by=t.c.recipient_id).label("n"),
        )
        .where(t.c.tenant_id == tenant_id, t.c.topic == topic)
        .subquery()
    )
    return (
        select(numbered.c.recipient_id)
        .where(numbered.c.n % step == 0)
        .order_by(numbered.c.n)
        .limit(count)
    )
