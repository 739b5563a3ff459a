"""What the planner reads and writes for a batch, on either store.

On PostgreSQL every read is one fixed statement with array parameters on asyncpg, and the
write is one statement (``bulk.store_plan``); on SQLite the same through SQLAlchemy, in one
connection for the reads and one transaction for the write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy import case, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store import bulk
from clarion.store import deliveries as delivery_store
from clarion.store import notifications as notification_store
from clarion.store import recipients as recipient_store
from clarion.store import templates as template_store
from clarion.store import topics as topic_store
from clarion.store.db import write_tx
from clarion.store.pg import PgPool
from clarion.store.tables import notifications, outbox


class PlanReads(Protocol):
    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    async def active_versions(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], int]: ...

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]: ...

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]: ...

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Deliveries of these notifications still to be sent (now or later)."""
        ...

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The recipients of the next chunk of a topic's subscribers, in id order."""
        ...


class _SqlReads:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await notification_store.load_many(self._conn, ids)

    async def active_versions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return await template_store.active_versions(self._conn, keys)

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return await recipient_store.load_many(self._conn, keys)

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]:
        return await delivery_store.existing_ids(self._conn, ids)

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[dict[str, Any]]:
        return await delivery_store.queued_of_notifications(self._conn, notification_ids)

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        query = topic_store.chunk_query(tenant_id, topic, after, limit)
        return [dict(row) for row in (await self._conn.execute(query)).mappings()]


def _pairs(keys: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    unique = sorted(set(keys))
    return [k[0] for k in unique], [k[1] for k in unique]


class _PgReads:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def notifications(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT * FROM notifications WHERE id = ANY($1::text[])", list(ids)
        )
        return {row["id"]: dict(row) for row in rows}

    async def active_versions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        rows = await self._conn.fetch(
            "SELECT t.tenant_id, t.name, t.active_version FROM templates AS t "
            "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, name) "
            "ON t.tenant_id = k.tenant_id AND t.name = k.name",
            *_pairs(keys),
        )
        return {(row[0], row[1]): row[2] for row in rows}

    async def recipients(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT r.* FROM recipients AS r "
            "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, id) "
            "ON r.tenant_id = k.tenant_id AND r.id = k.id",
            *_pairs(keys),
        )
        return {(row["tenant_id"], row["id"]): dict(row) for row in rows}

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT id FROM deliveries WHERE id = ANY($1::text[])", list(ids)
        )
        return {row[0] for row in rows}

    async def waiting_deliveries(self, notification_ids: Sequence[str]) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT * FROM deliveries WHERE notification_id = ANY($1::text[]) "
            "AND status = ANY($2::text[])",
            list(notification_ids),
            [str(s) for s in delivery_store.WAITING],
        )
        return [dict(row) for row in rows]

    async def topic_chunk(
        self, tenant_id: str, topic: str, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(topic_store.PG_CHUNK, tenant_id, topic, after or "", limit)
        return [dict(row) for row in rows]


@asynccontextmanager
async def reads(engine: AsyncEngine, pg: PgPool | None) -> AsyncIterator[PlanReads]:
    """One connection for a batch's reads."""
    if pg is not None:
        async with pg.connection() as raw:
            yield _PgReads(raw)
        return
    async with engine.connect() as conn:
        yield _SqlReads(conn)


async def store_plan(
    engine: AsyncEngine,
    pg: PgPool | None,
    rows: list[dict[str, Any]],
    planned_ids: Sequence[str],
    outbox_ids: Sequence[str],
    at: datetime,
) -> set[str]:
    """Insert the new deliveries (and the events of those not ``queued``), mark the
    notifications planned and drop their outbox rows, atomically. Returns the ids of the
    deliveries inserted: another planner may have inserted some of them a moment before
    (a plan message handed out twice), and only their inserter publishes them."""
    if pg is not None:
        return await bulk.store_plan(pg, rows, planned_ids, outbox_ids, at)
    # SQLite has one process, whose writers take turns: what the reads did not find is
    # what this transaction inserts.
    async with write_tx(engine) as conn:
        inserted = await delivery_store.insert_planned(conn, rows, planned_ids, at)
        await notification_store.delete_outbox(conn, outbox_ids)
    return inserted


async def store_chunk(
    engine: AsyncEngine,
    pg: PgPool | None,
    rows: list[dict[str, Any]],
    notification_id: str,
    cursor: tuple[str | None, str | None],
    done: bool,
    at: datetime,
    retry_at: datetime,
) -> set[str] | None:
    """One chunk of a topic send, atomically: the notification's cursor moves from
    ``cursor[0]`` to ``cursor[1]`` with the chunk's deliveries (see ``bulk.store_chunk``).
    None, and nothing stored, if the cursor had already moved or the send was cancelled."""
    if pg is not None:
        return await bulk.store_chunk(pg, rows, notification_id, cursor, done, at, retry_at)
    n = notifications
    after, through = cursor
    async with write_tx(engine) as conn:
        moved = await conn.execute(
            update(n)
            .where(
                n.c.id == notification_id,
                n.c.status.in_(["accepted", "scheduled", "processing"]),
                n.c.planned_at.is_(None),
                n.c.planned_through.is_(None) if after is None else n.c.planned_through == after,
            )
            .values(
                planned_through=through,
                planned_at=at if done else None,
                status=case(
                    (n.c.status.in_(["accepted", "scheduled"]), "processing"), else_=n.c.status
                ),
            )
        )
        if moved.rowcount != 1:
            return None
        inserted = await delivery_store.insert_planned(conn, rows, [], at)
        if done:
            await notification_store.delete_outbox(conn, [notification_id])
        else:
            await conn.execute(
                update(outbox)
                .where(outbox.c.notification_id == notification_id)
                .values(available_at=retry_at)
            )
    return inserted
