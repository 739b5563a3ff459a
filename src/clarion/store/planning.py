"""What the planner reads and writes for a batch, on either store.

On PostgreSQL every read is one fixed statement with array parameters on asyncpg, and the
write is one statement (``bulk.store_plan``); on SQLite the same through SQLAlchemy, in one
connection for the reads and one transaction for the write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.delivery import Stored
from clarion.store import bulk, delivery_rows
from clarion.store import categories as category_store
from clarion.store import deliveries as delivery_store
from clarion.store import notifications as notification_store
from clarion.store import recipients as recipient_store
from clarion.store import runs as run_store
from clarion.store import templates as template_store
from clarion.store import topics as topic_store
from clarion.store.bulk import StripeChunk
from clarion.store.db import write_tx
from clarion.store.pg import PgPool, fixed_plan
from clarion.store.sql import present
from clarion.store.tables import (
    deliveries,
    notifications,
    outbox,
    topic_stripes,
    topic_subscribers,
)


class Batch(NamedTuple):
    """What the planner's first read of a batch finds."""

    notes: dict[str, dict[str, Any]]  # the notifications by id
    # The active version of each one's template, by tenant and template name (absent when
    # the template is gone).
    heads: dict[tuple[str, str], int]
    # The version of each one's tenant's categories (store/categories.py ``versions``).
    category_versions: dict[str, int]
    # Those not planned yet: their outbox row is still there.
    unplanned: set[str]


class PlanReads(Protocol):
    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    async def batch(self, ids: Sequence[str]) -> Batch:
        """The notifications, their templates' active versions and their tenants' category
        versions."""
        ...

    async def category_versions(self, tenant_ids: Iterable[str]) -> dict[str, int]: ...

    async def active_versions(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], int]: ...

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]: ...

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]: ...

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[Stored]:
        """Deliveries of these notifications still to be sent (now or later)."""
        ...

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, last: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The recipients of the next chunk of a topic's subscribers, in id order, after
        ``after`` and up to ``last`` (inclusive; no end when None)."""
        ...

    async def stripe(self, notification_id: str, stripe: int) -> dict[str, Any] | None:
        """A topic send's stripe (store/tables.py ``topic_stripes``), or None."""
        ...


class _SqlReads:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await notification_store.load_many(self._conn, ids)

    async def batch(self, ids: Sequence[str]) -> Batch:
        notes = await self.notifications(ids)
        heads = await self.active_versions(
            {(n["tenant_id"], n["template"]) for n in notes.values()}
        )
        versions = await self.category_versions(n["tenant_id"] for n in notes.values())
        unplanned = await present(self._conn, outbox.c.notification_id, list(notes))
        return Batch(notes, heads, versions, unplanned)

    async def category_versions(self, tenant_ids: Iterable[str]) -> dict[str, int]:
        return await category_store.versions(self._conn, tenant_ids)

    async def active_versions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return await template_store.active_versions(self._conn, keys)

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return await recipient_store.load_many(self._conn, keys)

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]:
        return await present(self._conn, deliveries.c.id, ids)

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[Stored]:
        return await delivery_store.queued_of_notifications(self._conn, notification_ids)

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, last: str | None, limit: int
    ) -> list[dict[str, Any]]:
        query = topic_store.chunk_query(tenant_id, topic, after, last, limit)
        return [dict(row) for row in (await self._conn.execute(query)).mappings()]

    async def stripe(self, notification_id: str, stripe: int) -> dict[str, Any] | None:
        s = topic_stripes
        query = select(s).where(s.c.notification_id == notification_id, s.c.stripe == stripe)
        row = (await self._conn.execute(query)).mappings().first()
        return dict(row) if row is not None else None


def _pairs(keys: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    unique = sorted(set(keys))
    return [k[0] for k in unique], [k[1] for k in unique]


# The planner's two reads of every batch, planned once per connection (store/pg.py
# ``fixed_plan``): each probes its tables by their keys only. Planned at each execution, as
# four-table joins with `= ANY`, they cost PostgreSQL more to plan than to run
# (docs/performance.md, "Planning every statement anew").
#
# A batch's notifications, each with its template's active version, its tenant's category
# version and whether its outbox row is still there. Each is a scalar subquery, one probe
# of a key per notification, whatever the tables' statistics when the plan was made: as a
# join, a plan made while `category_versions` was small reads it whole for every batch; as
# `EXISTS`, PostgreSQL may hash the whole outbox for each batch (a "hashed SubPlan", chosen
# once the outbox holds a backlog of tens of thousands: 50-90 ms a batch).
_BATCH = fixed_plan(
    "SELECT (SELECT t.active_version FROM templates AS t "
    "WHERE t.tenant_id = n.tenant_id AND t.name = n.template) AS _head, "
    "coalesce((SELECT cv.version FROM category_versions AS cv "
    "WHERE cv.tenant_id = n.tenant_id), 0) AS _categories, "
    "(SELECT true FROM outbox AS o WHERE o.notification_id = n.id) AS _unplanned, "
    "n.* FROM notifications AS n WHERE n.id = ANY($1::text[])",
    grown=("notifications",),
)
_NOTIFICATIONS = fixed_plan(
    "SELECT * FROM notifications WHERE id = ANY($1::text[])", grown=("notifications",)
)
_RECIPIENTS = fixed_plan(
    "SELECT r.* FROM recipients AS r "
    "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, id) "
    "ON r.tenant_id = k.tenant_id AND r.id = k.id",
    grown=("recipients",),
)


class _PgReads:
    """Each read on a connection of its own pool (store/pg.py): those planned once on the
    fixed-plan pool, the others planned at each execution."""

    def __init__(self, pg: PgPool) -> None:
        self._pg = pg

    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = await self._pg.fetch(_NOTIFICATIONS, list(ids))
        return {row["id"]: dict(row) for row in rows}

    async def batch(self, ids: Sequence[str]) -> Batch:
        rows = await self._pg.fetch(_BATCH, list(ids))
        found = Batch({}, {}, {}, set())
        for row in rows:
            note = dict(row)
            head = note.pop("_head")
            if note.pop("_unplanned"):
                found.unplanned.add(note["id"])
            found.category_versions[note["tenant_id"]] = note.pop("_categories")
            found.notes[note["id"]] = note
            if head is not None:
                found.heads[(note["tenant_id"], note["template"])] = head
        return found

    async def category_versions(self, tenant_ids: Iterable[str]) -> dict[str, int]:
        wanted = sorted(set(tenant_ids))
        rows = await self._pg.fetch(
            "SELECT tenant_id, version FROM category_versions WHERE tenant_id = ANY($1::text[])",
            wanted,
        )
        return {**dict.fromkeys(wanted, 0), **{row[0]: row[1] for row in rows}}

    async def active_versions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        rows = await self._pg.fetch(
            "SELECT t.tenant_id, t.name, t.active_version FROM templates AS t "
            "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, name) "
            "ON t.tenant_id = k.tenant_id AND t.name = k.name",
            *_pairs(keys),
        )
        return {(row[0], row[1]): row[2] for row in rows}

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        rows = await self._pg.fetch(_RECIPIENTS, *_pairs(keys))
        return {(row["tenant_id"], row["id"]): dict(row) for row in rows}

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]:
        # Nothing to read: the planner plans only notifications still `accepted` or
        # `scheduled`, and the statement that inserts a notification's deliveries moves it
        # on (bulk.store_plan), so none of their deliveries exist yet; and should a second
        # planner race the first, the insert itself reports what it inserted (`ON CONFLICT
        # DO NOTHING RETURNING`). SQLite's write has no such report: it reads.
        return set()

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[Stored]:
        rows = await self._pg.fetch(
            "SELECT * FROM deliveries WHERE notification_id = ANY($1::text[]) "
            "AND status = ANY($2::text[])",
            list(notification_ids),
            [str(s) for s in delivery_store.WAITING],
        )
        return [delivery_rows.stored_of(row) for row in rows]

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, last: str | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._pg.fetch(
            topic_store.PG_CHUNK, tenant_id, topic, after or "", limit, last
        )
        return [dict(row) for row in rows]

    async def stripe(self, notification_id: str, stripe: int) -> dict[str, Any] | None:
        rows = await self._pg.fetch(
            "SELECT * FROM topic_stripes WHERE notification_id = $1 AND stripe = $2",
            notification_id,
            stripe,
        )
        return dict(rows[0]) if rows else None


@asynccontextmanager
async def reads(engine: AsyncEngine, pg: PgPool | None) -> AsyncIterator[PlanReads]:
    """A batch's reads: on SQLite in one connection; on PostgreSQL each on a connection
    of its pool."""
    if pg is not None:
        yield _PgReads(pg)
        return
    async with engine.connect() as conn:
        yield _SqlReads(conn)


async def store_plan(
    engine: AsyncEngine,
    pg: PgPool | None,
    items: list[Stored],
    planned_ids: Sequence[str],
    outbox_ids: Sequence[str],
    at: datetime,
) -> set[str]:
    """Insert the new deliveries (and the events of those not ``queued``), mark the
    notifications planned and drop their outbox rows, atomically. Returns the ids of the
    deliveries inserted: another planner may have inserted some of them a moment before
    (a plan message handed out twice), and only their inserter publishes them."""
    if pg is not None:
        return await bulk.store_plan(pg, items, planned_ids, outbox_ids, at)
    # SQLite has one process, whose writers take turns: what the reads did not find is
    # what this transaction inserts.
    async with write_tx(engine) as conn:
        inserted = await delivery_store.insert_planned(conn, items, at)
        await notification_store.delete_outbox(conn, outbox_ids)
    return inserted


_LIVE = ("accepted", "scheduled", "processing")


async def open_stripes(
    engine: AsyncEngine,
    note: dict[str, Any],
    most: int,
    chunk: int,
) -> list[int] | None:
    """Split a topic send's subscribers into stripes, once: up to ``most`` stripes of about
    equal size, none smaller than ``chunk`` subscribers (a small topic is one stripe). The
    first planner to get here makes them, holding the notification's row (so two planners
    never make two sets, and a cancellation waits); a later one finds them. Returns the
    stripes not done yet, or None if the send is no longer live (cancelled)."""
    n, s, t = notifications, topic_stripes, topic_subscribers
    nid = note["id"]
    async with write_tx(engine) as conn:
        moved = await conn.execute(
            update(n)
            .where(n.c.id == nid, n.c.status.in_(_LIVE), n.c.planned_at.is_(None))
            .values(
                status=case(
                    (n.c.status.in_(["accepted", "scheduled"]), "processing"), else_=n.c.status
                )
            )
        )
        if moved.rowcount != 1:
            return None
        found = (
            await conn.execute(select(s.c.stripe, s.c.done_at).where(s.c.notification_id == nid))
        ).all()
        if found:
            return sorted(stripe for stripe, done_at in found if done_at is None)
        total = (
            await conn.execute(
                select(func.count())
                .select_from(t)
                .where(t.c.tenant_id == note["tenant_id"], t.c.topic == note["topic"])
            )
        ).scalar_one()
        count = max(1, min(most, total // max(chunk, 1)))
        ends: list[str] = []
        if count > 1:
            step = -(-total // count)
            query = topic_store.boundaries_query(note["tenant_id"], note["topic"], step, count - 1)
            ends = list((await conn.execute(query)).scalars())
        starts: list[str | None] = [None, *ends]
        lasts: list[str | None] = [*ends, None]
        await conn.execute(
            insert(s),
            [
                {"notification_id": nid, "stripe": i, "planned_through": a, "last_id": b}
                for i, (a, b) in enumerate(zip(starts, lasts, strict=True))
            ],
        )
        return list(range(len(starts)))


async def store_stripe(
    engine: AsyncEngine, pg: PgPool | None, items: list[Stored], chunk: StripeChunk
) -> set[str] | None:
    """One chunk of a topic send's stripe, atomically: the stripe's cursor moves with the
    chunk's deliveries (see ``bulk.store_stripe``). None, and nothing stored, if the cursor
    had already moved or the send was cancelled."""
    if pg is not None:
        return await bulk.store_stripe(pg, items, chunk)
    async with write_tx(engine) as conn:
        if not await _move_cursor(conn, chunk):
            return None
        inserted = await delivery_store.insert_planned(conn, items, chunk.at)
        await _retry_later(conn, chunk)
    return inserted


async def _move_cursor(conn: AsyncConnection, chunk: StripeChunk) -> bool:
    """Move a stripe's cursor past ``chunk`` if the send is live and the cursor still
    stands where the chunk began (a concurrent planner's update is waited for, then found
    moved)."""
    n, s = notifications, topic_stripes
    notification_id, stripe, after, through, done, at, _ = chunk
    live = await conn.execute(
        select(n.c.id).where(n.c.id == notification_id, n.c.status.in_(_LIVE))
    )
    if live.first() is None:
        return False
    moved = await conn.execute(
        update(s)
        .where(
            s.c.notification_id == notification_id,
            s.c.stripe == stripe,
            s.c.done_at.is_(None),
            s.c.planned_through.is_(None) if after is None else s.c.planned_through == after,
        )
        .values(planned_through=through, done_at=at if done else None)
    )
    return bool(moved.rowcount == 1)


async def _retry_later(conn: AsyncConnection, chunk: StripeChunk) -> None:
    """The send's outbox row waits a grace period more: planning that stalls is
    published again."""
    await conn.execute(
        update(outbox)
        .where(outbox.c.notification_id == chunk.notification_id)
        .values(available_at=chunk.retry_at)
    )


async def store_stripe_runs(
    engine: AsyncEngine, rows: list[dict[str, Any]], chunk: StripeChunk
) -> set[str] | None:
    """One chunk of a topic send through a workflow, atomically: the stripe's cursor moves
    with the chunk's runs, stored and leased for their first advance (store/runs.py). The
    ids of the runs stored; None, and nothing stored, if the cursor had already moved (the
    conditional update waits for a concurrent one, then finds it moved) or the send was
    cancelled."""
    async with write_tx(engine) as conn:
        if not await _move_cursor(conn, chunk):
            return None
        fresh = await run_store.insert(conn, rows)
        await _retry_later(conn, chunk)
    return fresh


async def finish_topic(
    engine: AsyncEngine, pg: PgPool | None, notification_id: str, at: datetime
) -> None:
    """A topic send whose stripes are all done is planned: ``planned_at`` is set, and its
    stripes and outbox row go. Each planner that finished a stripe calls this after its
    commit, so the last of them sees every stripe done."""
    if pg is not None:
        await bulk.finish_topic(pg, notification_id, at)
        return
    n, s = notifications, topic_stripes
    async with write_tx(engine) as conn:
        undone = await conn.execute(
            select(s.c.stripe).where(s.c.notification_id == notification_id, s.c.done_at.is_(None))
        )
        if undone.first() is not None:
            return
        moved = await conn.execute(
            update(n)
            .where(n.c.id == notification_id, n.c.status.in_(_LIVE), n.c.planned_at.is_(None))
            .values(planned_at=at)
        )
        if moved.rowcount == 1:
            await conn.execute(delete(s).where(s.c.notification_id == notification_id))
            await notification_store.delete_outbox(conn, [notification_id])
