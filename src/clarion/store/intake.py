"""What the intake's group commit asks of the store, on either store.

SQLite: SQLAlchemy in one write transaction. PostgreSQL: asyncpg, fixed statements with
array parameters; the notifications and their outbox rows are one statement (a
data-modifying ``WITH``), so the write is atomic without a transaction block. On SQLite the
references (do the templates, recipients and topics exist) are read before the insert; on
PostgreSQL the insert reads them itself, leaves out each row that names one its tenant does
not have, and says which and why: one round trip for the whole group commit. Neither takes
a lock: a template removed a moment after the check leaves a notification the planner finds
no template for, on either store.
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
from clarion.store.packed import columns as packed_columns
from clarion.store.packed import param
from clarion.store.pg import PgPool, fixed_plan
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

# Why an insert that checks references left a row out (``Inserted.unknown``).
UNKNOWN_NAME = 1  # its template, or its workflow
UNKNOWN_TOPIC = 2
UNKNOWN_RECIPIENTS = 3


class Inserted(NamedTuple):
    """What an insert stored: the ids inserted (a row left out without a reason met a taken
    idempotency key); where the insert checks references, the rows left out for one, by id,
    with the reason, and the (tenant, recipient id) pairs that were not found."""

    ids: set[str]
    unknown: dict[str, int]
    missing_recipients: set[Key]


class IntakeTx(Protocol):
    # Whether ``insert`` checks the rows' references itself (else ``known`` is asked first).
    checks_references: bool

    async def known(
        self, templates: set[Key], recipients: set[Key], topics: set[Key], workflows: set[Key]
    ) -> Found:
        """Which (tenant, template name), (tenant, recipient id), (tenant, topic) and
        (tenant, workflow key) pairs exist."""
        ...

    async def insert(
        self, rows: Sequence[dict[str, Any]], available_at: Sequence[datetime]
    ) -> Inserted:
        """Insert notification rows (skipping a taken idempotency key, and, where it checks
        references, a row naming what its tenant does not have) with an outbox row for each
        one inserted, available at the matching time."""
        ...

    async def stored_by_key(self, keys: set[Key]) -> dict[Key, Stored]:
        """The stored notifications (id, request_hash, status) with these (tenant,
        idempotency key) pairs."""
        ...


class _SqlIntake:
    checks_references = False

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
    ) -> Inserted:
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
        return Inserted(inserted, {}, set())

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

_GONE = 4  # a row of the answer naming a recipient not found
_AT = f"${_N + 1}::timestamptz[]"
_TEMPLATES = f"${_N + 2}::text[], ${_N + 3}::text[]"
_RECIPIENTS = f"${_N + 4}::text[], ${_N + 5}::text[]"


# The references are read first, once each (the distinct templates and recipients of the
# whole commit, as pairs): `gone` holds the recipients not found, nearly always none (an
# uncorrelated EXISTS, run once, spares each row the look at it then); each row is then
# checked against those, its workflow and its topic by primary key. A row naming something
# unknown is not inserted, and comes back with the reason (in the order
# `_unknown_references` in store/notifications.py checks them), the missing recipients
# after it. Each look at a table is a scalar subquery by the table's key, not a join or an
# `EXISTS`: the statement is planned once per connection (store/pg.py ``fixed_plan``), and
# a scalar subquery is the one form whose plan probes the key per value whatever the
# table's statistics (a join or an `EXISTS` on a near-empty table was planned as a read of
# its whole key index; tests/test_fixed_plans.py).
def _insert(packed: bool) -> str:
    """The statement, with the rows' columns as arrays or packed texts (store/packed.py)."""
    columns = ", ".join(param(i + 1, kind, packed) for i, kind in enumerate(_COLUMNS.values()))
    return (
        "WITH tpl AS MATERIALIZED (SELECT k.tenant_id, k.name "
        f"FROM unnest({_TEMPLATES}) AS k(tenant_id, name) WHERE "
        "(SELECT true FROM templates AS t WHERE t.tenant_id = k.tenant_id AND t.name = k.name)), "
        "gone AS MATERIALIZED (SELECT k.tenant_id, k.id "
        f"FROM unnest({_RECIPIENTS}) AS k(tenant_id, id) WHERE "
        "(SELECT true FROM recipients AS r WHERE r.tenant_id = k.tenant_id AND r.id = k.id) "
        "IS NULL), "
        "v AS MATERIALIZED (SELECT u.*, CASE "
        "WHEN NOT CASE WHEN u.workflow IS NULL THEN EXISTS "
        "(SELECT 1 FROM tpl WHERE tpl.tenant_id = u.tenant_id AND tpl.name = u.template) "
        "ELSE (SELECT true FROM workflows AS w "
        "WHERE w.tenant_id = u.tenant_id AND w.key = u.workflow) IS NOT NULL END "
        f"THEN {UNKNOWN_NAME} "
        "WHEN u.topic IS NOT NULL AND (SELECT true FROM topics AS p "
        f"WHERE p.tenant_id = u.tenant_id AND p.name = u.topic) IS NULL THEN {UNKNOWN_TOPIC} "
        "WHEN EXISTS (SELECT 1 FROM gone) AND EXISTS (SELECT 1 FROM gone AS g "
        "WHERE g.tenant_id = u.tenant_id AND u.recipient_ids::jsonb ? g.id) "
        f"THEN {UNKNOWN_RECIPIENTS} "
        f"ELSE 0 END AS unknown FROM unnest({columns}, {_AT}) "
        f"AS u({', '.join(_COLUMNS)}, available_at)), "
        f"ins AS (INSERT INTO notifications ({', '.join(_COLUMNS)}) SELECT "
        + ", ".join(f"v.{name}::json" if name in _JSON else f"v.{name}" for name in _COLUMNS)
        + " FROM v WHERE v.unknown = 0 ON CONFLICT DO NOTHING RETURNING id), "
        "ob AS (INSERT INTO outbox (notification_id, tenant_id, available_at) "
        "SELECT v.id, v.tenant_id, v.available_at FROM v JOIN ins ON ins.id = v.id) "
        "SELECT 0, id, NULL::text FROM ins "
        "UNION ALL SELECT v.unknown, v.id, NULL FROM v WHERE v.unknown <> 0 "
        f"UNION ALL SELECT {_GONE}, g.tenant_id, g.id FROM gone AS g"
    )


# Planned once per connection (store/pg.py ``fixed_plan``): every table it reads is read
# by its key.
_INSERT = {packed: fixed_plan(_insert(packed)) for packed in (True, False)}
_KINDS = list(_COLUMNS.values())


# The reference checks in one round trip, for what the insert does not check (a key's repeats
# in one commit, a schedule's template): 0 marks a template found, 1 a recipient, 2 a topic,
# 3 a workflow.
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
    checks_references = True

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
    ) -> Inserted:
        arrays = [
            [orjson.dumps(row[name]).decode() for row in rows]
            if name in _JSON
            else [row[name] for row in rows]
            for name in _COLUMNS
        ]
        texts = packed_columns(_KINDS, arrays)
        templates = {(row["tenant_id"], row["template"]) for row in rows if row["workflow"] is None}
        recipients = {(row["tenant_id"], rid) for row in rows for rid in row["recipient_ids"]}
        records = await self._pg.fetch(
            _INSERT[texts is not None],
            *(arrays if texts is None else texts),
            list(available_at),
            *_pairs(templates),
            *_pairs(recipients),
        )
        done = Inserted(set(), {}, set())
        for kind, first, second in records:
            if kind == 0:
                done.ids.add(first)
            elif kind == _GONE:
                done.missing_recipients.add((first, second))
            else:
                done.unknown[first] = kind
        return done

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
