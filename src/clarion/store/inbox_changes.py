"""Every change to an inbox, and the recipient's counters kept in the same transaction.

A message counts in ``total`` while it is in the feed (``unread`` or ``read``, not
snoozed), in ``unread`` while it is unread there, in ``unseen`` while it is unseen there.
Each change reads the rows it changes, works out how each one's contribution moves, and
adds the difference to ``inbox_counters`` with one upsert, which also moves the row's
``version`` (what orders the counts live events carry).

Arrival order: a message stored (or back from snooze) takes the next ``seq`` of its
recipient's counter row, in the same upsert, so under that row's lock: a message that
takes a later ``seq`` commits after every one with an earlier ``seq`` of the recipient.
Resuming after a ``seq`` is therefore exact, which ``created_at`` (set before the commit)
is not.

Locks (PostgreSQL): a transaction locks the counter rows it changes first, in key order,
then message rows; so two changes never wait on each other in a cycle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store import inbox_access
from clarion.store.db import utcnow, write_tx
from clarion.store.inbox import STATE_COLUMNS, State, mine, public, stamp
from clarion.store.pg import PgPool
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


def _plus(a: Delta, b: Delta) -> Delta:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


async def bump(
    conn: AsyncConnection, deltas: dict[Key, Delta], arrivals: dict[Key, int] | None = None
) -> dict[Key, State]:
    """Add each recipient's delta to its counters and move its ``seq`` on by its number
    of ``arrivals`` (one statement, in key order); returns each changed row as it is now."""
    arrivals = arrivals or {}
    keys = sorted(
        k for k in {*deltas, *arrivals} if deltas.get(k, (0, 0, 0)) != (0, 0, 0) or arrivals.get(k)
    )
    if not keys:
        return {}
    params = []
    for key in keys:
        d = deltas.get(key, (0, 0, 0))
        params.append(
            {
                "tenant_id": key[0],
                "recipient_id": key[1],
                "unread": d[0],
                "unseen": d[1],
                "total": d[2],
                "seq": arrivals.get(key, 0),
                "version": 1,
            }
        )
    c = inbox_counters
    stmt: Any = postgresql.insert(c) if conn.dialect.name == "postgresql" else sqlite.insert(c)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "recipient_id"],
        set_={
            **{
                name: c.c[name] + stmt.excluded[name]
                for name in ("unread", "unseen", "total", "seq")
            },
            "version": c.c.version + 1,
        },
    ).returning(c.c.tenant_id, c.c.recipient_id, *(c.c[n] for n in STATE_COLUMNS))
    rows = (await conn.execute(stmt, params)).mappings().all()
    return {(r["tenant_id"], r["recipient_id"]): _state(r) for r in rows}


def _state(row: Any) -> State:
    return {name: int(row[name]) for name in STATE_COLUMNS}


async def _lock_counter(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> State | None:
    """The recipient's counter row, locked (PostgreSQL) before any of its messages."""
    c = inbox_counters
    query = select(*(c.c[n] for n in STATE_COLUMNS)).where(
        c.c.tenant_id == tenant_id, c.c.recipient_id == recipient_id
    )
    row = (await conn.execute(_locked(conn, query))).mappings().first()
    return None if row is None else _state(row)


def _locked(conn: AsyncConnection, query: Select[Any]) -> Select[Any]:
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


def _numbered(
    values: list[dict[str, Any]], arrivals: Counter[Key], states: dict[Key, State]
) -> None:
    """Give each row the next ``seq`` of its recipient, in list order: the upsert moved
    each recipient's ``seq`` on by its number of rows, and returned where it ends."""
    following = {key: states[key]["seq"] - n + 1 for key, n in arrivals.items()}
    for row in values:
        key = (row["tenant_id"], row["recipient_id"])
        row["seq"] = following[key]
        following[key] += 1


async def insert(
    engine: AsyncEngine, rows: list[dict[str, Any]], pg: PgPool | None = None
) -> list[dict[str, Any]]:
    """Store new messages; returns those that were not stored already (a repeated send of
    the same delivery inserts nothing), as ``{"tenant_id", "recipient_id", "message",
    "seq", "counts"}`` (``counts``: the recipient's, this transaction's changes included).

    The counters are moved first (taking each recipient's next ``seq`` numbers under its
    row lock), then the messages inserted: on PostgreSQL in one statement, which counts
    only the messages not stored yet; on SQLite in two, where a message that was there
    already gives its count back (a third statement, rare). A ``seq`` number given back
    stays unused."""
    now = utcnow()
    values = [_new_row(r, now) for r in rows]
    if pg is not None:
        stored, states = await _insert_pg(pg, values)
        return _stored(stored, states)
    arrivals = Counter((v["tenant_id"], v["recipient_id"]) for v in values)
    async with write_tx(engine) as conn:
        states = await bump(conn, {k: (n, n, n) for k, n in arrivals.items()}, arrivals)
        _numbered(values, arrivals, states)
        stmt = insert_ignoring_conflicts(conn, t).returning(t.c.id)
        fresh = set((await conn.execute(stmt, values)).scalars())
        stored = [v for v in values if v["id"] in fresh]
        if len(stored) < len(values):
            there = Counter(
                (v["tenant_id"], v["recipient_id"]) for v in values if v["id"] not in fresh
            )
            states.update(await bump(conn, {k: (-n, -n, -n) for k, n in there.items()}))
    return _stored(stored, states)


def _stored(stored: list[dict[str, Any]], states: dict[Key, State]) -> list[dict[str, Any]]:
    """What the live inbox is told of each message stored (or woken): it, its place in the
    recipient's arrival order and the recipient's counts after the change."""
    return [
        {
            "tenant_id": v["tenant_id"],
            "recipient_id": v["recipient_id"],
            "message": public(_Row(v)),
            "seq": v["seq"],
            "counts": states[(v["tenant_id"], v["recipient_id"])],
        }
        for v in stored
    ]


# The counters' upsert on asyncpg (a fixed SQL text, columns as arrays), for counts given
# back: in key order (WITH ORDINALITY keeps the order the keys were sorted in), as every
# change locks them.
_PG_BUMP = (
    "INSERT INTO inbox_counters AS c (tenant_id, recipient_id, unread, unseen, total, seq, "
    "version) SELECT k.tenant_id, k.recipient_id, k.d0, k.d1, k.d2, k.n, 1 FROM unnest("
    "$1::text[], $2::text[], $3::int[], $4::int[], $5::int[], $6::int[]) WITH ORDINALITY "
    "AS k(tenant_id, recipient_id, d0, d1, d2, n, o) ORDER BY k.o "
    "ON CONFLICT (tenant_id, recipient_id) DO UPDATE SET unread = c.unread + "
    "excluded.unread, unseen = c.unseen + excluded.unseen, total = c.total + excluded.total, "
    "seq = c.seq + excluded.seq, version = c.version + 1 "
    f"RETURNING c.tenant_id, c.recipient_id, {', '.join('c.' + n for n in STATE_COLUMNS)}"
)
_PG_COLUMNS = {
    "id": "text",
    "tenant_id": "text",
    "recipient_id": "text",
    "delivery_id": "text",
    "notification_id": "text",
    "content": "json",
    "category": "text",
    "status": "text",
    "created_at": "timestamptz",
    "fallback_due": "timestamptz",
    "fallback_channel": "text",
    "seq": "bigint",
}


async def _pg_bump(
    conn: asyncpg.Connection, deltas: dict[Key, Delta], arrivals: dict[Key, int]
) -> dict[Key, State]:
    keys = sorted(deltas)
    rows = await conn.fetch(
        _PG_BUMP,
        [k[0] for k in keys],
        [k[1] for k in keys],
        *([deltas[k][i] for k in keys] for i in range(3)),
        [arrivals.get(k, 0) for k in keys],
    )
    return {(r[0], r[1]): {n: int(r[n]) for n in STATE_COLUMNS} for r in rows}


# ``insert`` on PostgreSQL as one statement, so one round trip and no explicit transaction:
# the messages not stored yet are counted per recipient, the counters moved (in key order,
# as every change locks them) and each message inserted with its recipient's next ``seq``
# (the counter's new ``seq``, less the recipient's count, plus the message's place among
# the recipient's in list order, ``o``); what comes back is the counters, then the ids of
# the messages inserted, each with its ``seq``. The counter rows stay locked until the
# statement commits.
_PG_MESSAGE_COLUMNS = {name: kind for name, kind in _PG_COLUMNS.items() if name != "seq"}
_PG_STORE = (
    "WITH v AS (SELECT * FROM unnest("
    + ", ".join(
        f"${i}::{'text' if k == 'json' else k}[]"
        for i, k in enumerate(_PG_MESSAGE_COLUMNS.values(), 1)
    )
    + f") WITH ORDINALITY AS v({', '.join(_PG_MESSAGE_COLUMNS)}, o) "
    "WHERE NOT EXISTS (SELECT 1 FROM inbox_messages AS m WHERE m.id = v.id)), "
    "k AS (SELECT tenant_id, recipient_id, count(*)::int AS n FROM v "
    "GROUP BY tenant_id, recipient_id), "
    "bump AS (INSERT INTO inbox_counters AS c (tenant_id, recipient_id, unread, unseen, "
    "total, seq, version) SELECT k.tenant_id, k.recipient_id, k.n, k.n, k.n, k.n, 1 FROM k "
    # Byte order, as Python sorts the keys of every other change.
    'ORDER BY k.tenant_id COLLATE "C", k.recipient_id COLLATE "C" '
    "ON CONFLICT (tenant_id, recipient_id) DO UPDATE SET unread = c.unread + "
    "excluded.unread, unseen = c.unseen + excluded.unseen, total = c.total + excluded.total, "
    "seq = c.seq + excluded.seq, version = c.version + 1 "
    f"RETURNING c.tenant_id, c.recipient_id, {', '.join('c.' + n for n in STATE_COLUMNS)}), "
    f"ins AS (INSERT INTO inbox_messages ({', '.join(_PG_COLUMNS)}) SELECT "
    + ", ".join(f"v.{n}::json" if k == "json" else f"v.{n}" for n, k in _PG_MESSAGE_COLUMNS.items())
    + ", b.seq - k.n + row_number() OVER (PARTITION BY v.tenant_id, v.recipient_id "
    "ORDER BY v.o) FROM v JOIN k USING (tenant_id, recipient_id) "
    "JOIN bump AS b USING (tenant_id, recipient_id) "
    "ON CONFLICT DO NOTHING RETURNING id, seq) "
    f"SELECT tenant_id, recipient_id, {', '.join('b.' + n for n in STATE_COLUMNS)}, k.n, "
    "NULL AS id FROM bump AS b JOIN k USING (tenant_id, recipient_id) "
    # A message's row: its id, and its seq in the seq column.
    "UNION ALL SELECT NULL, NULL, "
    + ", ".join("seq" if n == "seq" else "NULL" for n in STATE_COLUMNS)
    + ", NULL, id FROM ins"
)


async def _insert_pg(
    pg: PgPool, values: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[Key, State]]:
    """``insert`` on PostgreSQL, in one statement (``_PG_STORE``). A message found stored
    already is not counted; one stored by another writer at the same moment (a second
    attempt of its delivery racing the first) gives its count back in a second statement."""
    columns = [
        [orjson.dumps(v[n]).decode() for v in values] if kind == "json" else [v[n] for v in values]
        for n, kind in _PG_MESSAGE_COLUMNS.items()
    ]
    states: dict[Key, State] = {}
    counted: Counter[Key] = Counter()
    numbers: dict[str, int] = {}
    for row in await pg.fetch(_PG_STORE, *columns):
        if row["id"] is not None:
            numbers[row["id"]] = int(row["seq"])
        else:
            key = (row["tenant_id"], row["recipient_id"])
            states[key] = {n: int(row[n]) for n in STATE_COLUMNS}
            counted[key] = int(row["n"])
    stored = []
    for v in values:
        if v["id"] in numbers:
            v["seq"] = numbers.pop(v["id"])
            stored.append(v)
            counted[(v["tenant_id"], v["recipient_id"])] -= 1
    raced = {key: n for key, n in counted.items() if n > 0}
    if raced:
        async with pg.connection() as conn:
            states.update(await _pg_bump(conn, {k: (-n, -n, -n) for k, n in raced.items()}, {}))
    return stored, states


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
        "seq": 0,
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


Changed = tuple[dict[str, Any], State]


async def change(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, action: str
) -> Changed | None:
    """Apply ``action`` to one message; the message as it is after and the recipient's
    counts, or None if the recipient has no such message."""
    return await _set(
        engine, tenant_id, recipient_id, message_id, lambda r: _after(action, r, utcnow())
    )


async def snooze(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, message_id: str, until: datetime
) -> Changed | None:
    """Hide the message from the feed and the counts until ``until``."""
    found = await _set(
        engine, tenant_id, recipient_id, message_id, lambda _: {"snoozed_until": until}
    )
    if found is not None:
        found[0]["snoozed_until"] = stamp(until)
    return found


async def _set(
    engine: AsyncEngine,
    tenant_id: str,
    recipient_id: str,
    message_id: str,
    changes: Callable[[dict[str, Any]], dict[str, Any]],
) -> Changed | None:
    key = (tenant_id, recipient_id)
    async with write_tx(engine) as conn:
        state = await _lock_counter(conn, tenant_id, recipient_id)
        row = await _one(conn, tenant_id, recipient_id, message_id)
        if row is None or state is None:
            return None
        values = changes(row)
        after = {**row, **values}
        await conn.execute(update(t).where(t.c.id == message_id).values(values))
        moved = await bump(conn, {key: _minus(contribution(after), contribution(row))})
    return public(_Row(after)), moved.get(key, state)


async def change_all(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, action: str
) -> tuple[int, State]:
    """``read``: every unread message of the feed is read; ``archive``: every read one is
    archived. Returns how many changed, and the recipient's counts."""
    source = {"read": "unread", "archive": "read"}[action]
    now = utcnow()
    key = (tenant_id, recipient_id)
    query = select(t.c.id, t.c.status, t.c.seen_at, t.c.read_at, t.c.archived_at, t.c.snoozed_until)
    query = query.where(
        mine(tenant_id, recipient_id), t.c.status == source, t.c.snoozed_until.is_(None)
    )
    async with write_tx(engine) as conn:
        state = await _lock_counter(conn, tenant_id, recipient_id)
        if state is None:  # no message was ever stored
            return 0, {name: 0 for name in STATE_COLUMNS}
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
            total = _plus(total, _minus(contribution(after), contribution(row)))
        moved = await bump(conn, {key: total})
    return len(rows), moved.get(key, state)


async def wake_due(
    engine: AsyncEngine, now: datetime | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Bring back snoozed messages whose time (``now``: the present) has come. Each comes
    back as a new arrival: it takes its recipient's next ``seq``, so a client that resumes
    from before gets it again. Returned as ``{"tenant_id", "recipient_id", "message",
    "seq", "counts"}`` for the live push.

    The candidates are read first, then their recipients' counter rows locked (their
    ``seq`` moved on), then each message cleared where it is still due: of processes that
    race, one brings each message back (the others' ``seq`` numbers stay unused)."""
    moment = now or utcnow()
    due = (
        select(t.c.id, t.c.tenant_id, t.c.recipient_id)
        .where(t.c.snoozed_until <= moment)
        .order_by(t.c.tenant_id, t.c.recipient_id, t.c.snoozed_until, t.c.id)
        .limit(limit)
    )
    async with write_tx(engine) as conn:
        candidates = [dict(r) for r in (await conn.execute(due)).mappings()]
        if not candidates:
            return []
        arrivals = Counter((c["tenant_id"], c["recipient_id"]) for c in candidates)
        states = await bump(conn, {}, arrivals)
        _numbered(candidates, arrivals, states)
        await conn.execute(
            update(t)
            .where(t.c.id == bindparam("m_id"), t.c.snoozed_until <= moment)
            .values(snoozed_until=None, seq=bindparam("m_seq")),
            [{"m_id": c["id"], "m_seq": c["seq"]} for c in candidates],
        )
        numbers = {c["id"]: c["seq"] for c in candidates}
        found = await conn.execute(select(t).where(t.c.id.in_(list(numbers))))
        rows = [
            dict(r)
            for r in found.mappings()
            if r["seq"] == numbers[r["id"]] and r["snoozed_until"] is None
        ]
        deltas: dict[Key, Delta] = {}
        for row in rows:
            key = (row["tenant_id"], row["recipient_id"])
            deltas[key] = _plus(deltas.get(key, (0, 0, 0)), contribution(row))
        states.update(await bump(conn, deltas))
    return _stored(rows, states)


@dataclass(frozen=True)
class UpkeepLook:
    """What an API process's inbox upkeep has to do (realtime/gate.py)."""

    revoked: list[tuple[str, str, datetime]]
    fallbacks: list[dict[str, Any]]
    snoozed: bool


# Whether the upkeep's look would find anything, in one round trip on PostgreSQL.
_ANYTHING = (
    "SELECT EXISTS (SELECT 1 FROM inbox_revocations WHERE revoked_at > $1) "
    "OR EXISTS (SELECT 1 FROM inbox_messages WHERE snoozed_until <= $2) "
    "OR ($3 AND EXISTS (SELECT 1 FROM inbox_messages "
    "WHERE fallback_due <= $2 AND seen_at IS NULL))"
)
_NOTHING = UpkeepLook([], [], False)


async def upkeep_look(
    engine: AsyncEngine,
    since: datetime | None,
    now: datetime,
    *,
    fallbacks: bool,
    pg: PgPool | None = None,
) -> UpkeepLook:
    """In one read: the token revocations recorded after ``since``
    (:func:`inbox_access.revocations_in`), the messages whose offline fallback is due (when
    ``fallbacks``), and whether a snoozed message has come due (for :func:`wake_due`). On
    PostgreSQL, once the first look has set ``since``, one round trip tells first whether
    there is anything at all."""
    if pg is not None and since is not None:
        [[anything]] = await pg.fetch(_ANYTHING, since, now, fallbacks)
        if not anything:
            return _NOTHING
    snoozed_due = select(t.c.id).where(t.c.snoozed_until <= now).limit(1)
    async with engine.connect() as conn:
        revoked = await inbox_access.revocations_in(conn, since)
        due = await _due_fallbacks(conn, now) if fallbacks else []
        snoozed = (await conn.execute(snoozed_due)).first() is not None
    return UpkeepLook(revoked, due, snoozed)


async def _due_fallbacks(
    conn: AsyncConnection, now: datetime, limit: int = 500
) -> list[dict[str, Any]]:
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
        .where(t.c.fallback_due <= now, t.c.seen_at.is_(None))
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def fallbacks_done(engine: AsyncEngine, ids: list[str]) -> None:
    if not ids:
        return
    async with write_tx(engine) as conn:
        for part in chunks(ids, 1000):
            await conn.execute(update(t).where(t.c.id.in_(part)).values(fallback_due=None))
