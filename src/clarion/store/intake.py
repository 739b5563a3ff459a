"""What the intake's group commit asks of the store, on either store.

SQLite: SQLAlchemy in one write transaction. PostgreSQL: asyncpg, fixed statements with
array parameters; the notifications and their outbox rows are one statement (a
data-modifying ``WITH``), so the write is atomic without a transaction block. The reads
before it (do the templates, recipients and topics exist) take no lock on either store: a template
removed a moment after the check leaves a notification the planner finds no template for,
as it would on SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import orjson
from sqlalchemy import Table, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store import tables
from clarion.store.db import write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, execute_many, grouped, insert_ignoring_conflicts, present
from clarion.store.tables import notifications, outbox, recipients

Key = tuple[str, str]


class Stored(NamedTuple):
    """A stored notification, as an idempotent repeat of its request is answered."""

    id: str
    request_hash: str | None
    status: str


# Of the keys asked for: the templates, recipients, topics and workflows found.
Found = tuple[set[Key], set[Key], set[Key], set[Key]]


class IntakeTx(Protocol):
    async def known(
        self, templates: set[Key], recipients: set[Key], topics: set[Key], workflows: set[Key]
    ) -> Found:
        """Which (tenant, template name), (tenant, recipient id), (tenant, topic) and
        (tenant, workflow key) pairs exist."""
        ...

    async def insert(
        self, rows: Sequence[dict[str, Any]], available_at: Sequence[datetime]
    ) -> set[str]:
        """Insert notification rows (skipping a taken idempotency key) with an outbox row
        for each one inserted, available at the matching time; the ids inserted."""
        ...

    async def stored_by_key(self, keys: set[Key]) -> dict[Key, Stored]:
        """The stored notifications (id, request_hash, status) with these (tenant,
        idempotency key) pairs."""
        ...


class _SqlIntake:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def known(
        self, templates: set[Key], recipients: set[Key], topics: set[Key], workflows: set[Key]
    ) -> Found:
        return (
            await self._known(tables.templates, templates) if templates else set(),
            await self._known_recipients(recipients),
            await self._known(tables.topics, topics) if topics else set(),
            await self._known(tables.workflows, workflows, "key") if workflows else set(),
        )

    async def _known(self, table: Table, keys: set[Key], column: str = "name") -> set[Key]:
        """Which of these (tenant, name) keys ``table`` (templates, topics, workflows)
        holds."""
        found: set[Key] = set()
        t, name = table, table.c[column]
        for part in chunks(sorted(keys), 1000):
            query = select(t.c.tenant_id, name).where(tuple_(t.c.tenant_id, name).in_(part))
            found.update((row[0], row[1]) for row in await self._conn.execute(query))
        return found

    async def _known_recipients(self, keys: set[Key]) -> set[Key]:
        found: set[Key] = set()
        for tenant, ids in grouped(keys).items():
            for part in chunks(sorted(ids), 1000):
                query = select(recipients.c.id).where(
                    recipients.c.tenant_id == tenant, recipients.c.id.in_(part)
                )
                found.update((tenant, rid) for rid in (await self._conn.execute(query)).scalars())
        return found

    async def insert(
        self, rows: Sequence[dict[str, Any]], available_at: Sequence[datetime]
    ) -> set[str]:
        inserted: set[str] = set()
        for part in chunks(list(rows), 1000):
            inserted.update(await self._insert(part))
        outbox_rows = [
            {"notification_id": row["id"], "tenant_id": row["tenant_id"], "available_at": at}
            for row, at in zip(rows, available_at, strict=True)
            if row["id"] in inserted
        ]
        for part in chunks(outbox_rows, 1000):
            await execute_many(self._conn, _OUTBOX, part)
        return inserted

    async def _insert(self, rows: list[dict[str, Any]]) -> set[str]:
        stmt = insert_ignoring_conflicts(self._conn, notifications)
        if self._conn.dialect.name != "sqlite":
            return set(
                (await self._conn.execute(stmt.returning(notifications.c.id), rows)).scalars()
            )
        # Without RETURNING, the rows go to the driver as they are (``execute_many``). A row
        # left out met a taken idempotency key; the ids are new (domain/ids.py ``new_id``),
        # so an id stored once this insert is done is one it stored (SQLite's writers take
        # turns: nobody else wrote meanwhile).
        if await execute_many(self._conn, stmt, rows) == len(rows):
            return {row["id"] for row in rows}
        return await present(self._conn, notifications.c.id, [row["id"] for row in rows])

    async def stored_by_key(self, keys: set[Key]) -> dict[Key, Stored]:
        # One `tenant_id = ? AND idempotency_key IN (...)` per tenant, which the unique
        # index answers whatever the planner knows of the table.
        found: dict[Key, Stored] = {}
        n = notifications
        for tenant, tenant_keys in grouped(keys).items():
            for part in chunks(sorted(tenant_keys), 1000):
                query = select(n.c.id, n.c.idempotency_key, n.c.request_hash, n.c.status).where(
                    n.c.tenant_id == tenant, n.c.idempotency_key.in_(part)
                )
                for row in await self._conn.execute(query):
                    found[(tenant, row.idempotency_key)] = Stored(
                        row.id, row.request_hash, row.status
                    )
        return found


_OUTBOX = outbox.insert()
_COLUMNS = {
    "id": "text",
    "tenant_id": "text",
    "template": "text",
    "recipient_ids": "text",  # JSON, as text
    "data": "text",  # JSON, as text
    "priority": "text",
    "channels": "text",  # JSON, as text
    "send_at": "timestamptz",
    "expires_at": "timestamptz",
    "status": "text",
    "idempotency_key": "text",
    "request_hash": "text",
    "created_at": "timestamptz",
    "topic": "text",
    "trace": "text",
    "workflow": "text",
    "cancellation_key": "text",
}
_JSON = {"recipient_ids", "data", "channels"}
_N = len(_COLUMNS)

_INSERT = (
    "WITH v AS (SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{kind}[]" for i, kind in enumerate(_COLUMNS.values()))
    + f", ${_N + 1}::timestamptz[]) AS v({', '.join(_COLUMNS)}, available_at)), "
    f"ins AS (INSERT INTO notifications ({', '.join(_COLUMNS)}) SELECT "
    + ", ".join(f"v.{name}::json" if name in _JSON else f"v.{name}" for name in _COLUMNS)
    + " FROM v ON CONFLICT DO NOTHING RETURNING id), "
    "ob AS (INSERT INTO outbox (notification_id, tenant_id, available_at) "
    "SELECT v.id, v.tenant_id, v.available_at FROM v JOIN ins ON ins.id = v.id) "
    "SELECT id FROM ins"
)


# The reference checks in one round trip: 0 marks a template found, 1 a recipient, 2 a topic.
_KNOWN = (
    "SELECT 0, t.tenant_id, t.name FROM templates AS t "
    "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, name) "
    "ON t.tenant_id = k.tenant_id AND t.name = k.name "
    "UNION ALL "
    "SELECT 1, r.tenant_id, r.id FROM recipients AS r "
    "JOIN unnest($3::text[], $4::text[]) AS k(tenant_id, id) "
    "ON r.tenant_id = k.tenant_id AND r.id = k.id "
    "UNION ALL "
    "SELECT 2, p.tenant_id, p.name FROM topics AS p "
    "JOIN unnest($5::text[], $6::text[]) AS k(tenant_id, name) "
    "ON p.tenant_id = k.tenant_id AND p.name = k.name "
    "UNION ALL "
    "SELECT 3, w.tenant_id, w.key FROM workflows AS w "
    "JOIN unnest($7::text[], $8::text[]) AS k(tenant_id, key) "
    "ON w.tenant_id = k.tenant_id AND w.key = k.key"
)


def _pairs(keys: Iterable[Key]) -> tuple[list[str], list[str]]:
    ordered = sorted(keys)
    return [k[0] for k in ordered], [k[1] for k in ordered]


class _PgIntake:
    def __init__(self, pg: PgPool) -> None:
        self._pg = pg

    async def known(
        self, templates: set[Key], recipients: set[Key], topics: set[Key], workflows: set[Key]
    ) -> Found:
        rows = await self._pg.fetch(
            _KNOWN, *_pairs(templates), *_pairs(recipients), *_pairs(topics), *_pairs(workflows)
        )
        found: Found = (set(), set(), set(), set())
        for row in rows:
            found[row[0]].add((row[1], row[2]))
        return found

    async def insert(
        self, rows: Sequence[dict[str, Any]], available_at: Sequence[datetime]
    ) -> set[str]:
        arrays = [
            [orjson.dumps(row[name]).decode() for row in rows]
            if name in _JSON
            else [row[name] for row in rows]
            for name in _COLUMNS
        ]
        records = await self._pg.fetch(_INSERT, *arrays, list(available_at))
        return {record[0] for record in records}

    async def stored_by_key(self, keys: set[Key]) -> dict[Key, Stored]:
        rows = await self._pg.fetch(
            "SELECT n.tenant_id, n.idempotency_key, n.id, n.request_hash, n.status "
            "FROM notifications AS n "
            "JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, idempotency_key) "
            "ON n.tenant_id = k.tenant_id AND n.idempotency_key = k.idempotency_key",
            *_pairs(keys),
        )
        return {
            (row["tenant_id"], row["idempotency_key"]): Stored(
                row["id"], row["request_hash"], row["status"]
            )
            for row in rows
        }


@asynccontextmanager
async def intake_tx(engine: AsyncEngine, pg: PgPool | None) -> AsyncIterator[IntakeTx]:
    if pg is not None:
        yield _PgIntake(pg)
        return
    async with write_tx(engine) as conn:
        yield _SqlIntake(conn)
