"""The hot statements on PostgreSQL: set-based, one fixed SQL text each, run on asyncpg.

A batch's column values travel as one array parameter per column and are unpacked by
``unnest``; ids go as one array (``= ANY($1)``). ``executemany`` would send one
Bind/Execute per row, which asyncpg and PostgreSQL both pay for row by row, and an ``IN``
list is a new SQL text (a new prepared statement) for every size. A write that touches
several tables is one statement with data-modifying ``WITH`` clauses: atomic without a
transaction block, and one round trip. SQLite, with no wire to cross, keeps SQLAlchemy.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from clarion.domain.delivery import Stored
from clarion.domain.models import WAITING_STATUSES, DeliveryStatus, NotificationStatus
from clarion.store import day_partitions, delivery_rows
from clarion.store.packed import columns as packed_columns
from clarion.store.packed import param
from clarion.store.pg import PgPool, fixed_plan

# Column name -> PostgreSQL array type, in the order of a new delivery's values.
_DELIVERY_TYPES = {
    "attempts": "int",
    "address": "json",
    "content": "json",
    "critical": "bool",
    "fallback": "json",
    "scheduled_for": "timestamptz",
    "expires_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "sent_at": "timestamptz",
}
_DELIVERY_COLUMNS = {name: _DELIVERY_TYPES.get(name, "text") for name in delivery_rows.COLUMNS}
_JSON_COLUMNS = {name for name, kind in _DELIVERY_COLUMNS.items() if kind == "json"}
# What a new delivery's row holds the same in every row of a batch (delivery_rows.values):
# made and last updated when the batch is stored (the statement's time parameter), never
# sent yet. Not sent as columns.
_FIXED = {"created_at": "{at}", "updated_at": "{at}", "sent_at": "NULL::timestamptz"}
_SENT_COLUMNS = {n: kind for n, kind in _DELIVERY_COLUMNS.items() if n not in _FIXED}
_SENT = [i for i, name in enumerate(_DELIVERY_COLUMNS) if name not in _FIXED]


def _unnest(columns: dict[str, str], first: int = 1, packed: bool = False) -> str:
    """``unnest($first::type[], ...) AS v(names)``, each parameter an array or one packed
    text (store/packed.py); JSON travels as text (asyncpg has no json[] codec) and is cast
    back where it is used."""
    arrays = ", ".join(
        param(first + i, "text" if kind == "json" else kind, packed)
        for i, kind in enumerate(columns.values())
    )
    return f"unnest({arrays}) AS v({', '.join(columns)})"


def _kinds(columns: dict[str, str]) -> list[str]:
    return ["text" if kind == "json" else kind for kind in columns.values()]


def _select(columns: dict[str, str], at: str) -> str:
    return ", ".join(
        _FIXED[name].format(at=at)
        if name in _FIXED
        else f"v.{name}::json"
        if kind == "json"
        else f"v.{name}"
        for name, kind in columns.items()
    )


_N = len(_SENT_COLUMNS)
_SENT_KINDS = _kinds(_SENT_COLUMNS)
_AT = f"${_N + 1}::timestamptz"


def _new_deliveries(packed: bool) -> str:
    """The insert of a batch's deliveries, from the columns of :data:`_SENT_COLUMNS` first
    and the batch's time after them."""
    return (
        f"INSERT INTO deliveries ({', '.join(_DELIVERY_COLUMNS)}) "
        f"SELECT {_select(_DELIVERY_COLUMNS, _AT)} FROM {_unnest(_SENT_COLUMNS, 1, packed)} "
    )


# New deliveries, with an event for each one inserted in another state than `queued` (a
# delivery's creation is its `queued` event), and the planned notifications' outbox rows
# gone (which is what marks them planned: store/notifications.py ``planned_status``): the
# planner's whole write, one statement. None of a cancelled notification: `live` takes the
# notifications' row locks, so a cancellation either comes first (and nothing is inserted)
# or waits for this statement (and then cancels what it inserted). A share lock, not an
# update to `processing`: the update wrote a new version of the row and an entry in each of
# its five indexes (26 µs of server CPU a notification; the lock, 4 µs and one WAL record).
_STORE_PLAN = {
    packed: fixed_plan(
        f"WITH live AS (SELECT id FROM notifications "
        f"WHERE id = ANY(${_N + 2}::text[]) AND status <> 'cancelled' FOR SHARE), "
        f"ins AS ({_new_deliveries(packed)}"
        "JOIN live ON live.id = v.notification_id "
        "ON CONFLICT DO NOTHING RETURNING id, tenant_id, status, reason), "
        "ev AS (INSERT INTO delivery_events (delivery_id, tenant_id, status, detail, created_at) "
        f"SELECT id, tenant_id, status, reason, {_AT} FROM ins "
        f"WHERE status <> '{DeliveryStatus.QUEUED.value}'), "
        f"gone AS (DELETE FROM outbox WHERE notification_id = ANY(${_N + 3}::text[])) "
        "SELECT id FROM ins",
        grown=("notifications",),
    )
    for packed in (True, False)
}

_CHANGE_COLUMNS = {
    "id": "text",
    "status": "text",
    "attempts": "int",
    "reason": "text",
    "last_error": "text",
    "provider_message_id": "text",
    "scheduled_for": "timestamptz",
    "sent_at": "timestamptz",
    "provider": "text",
    "latency_ms": "int",
}
_EVENT_COLUMNS = {
    "delivery_id": "text",
    "tenant_id": "text",
    "status": "text",
    "detail": "text",
    "attempt": "int",
    "provider": "text",
    "latency_ms": "int",
    "error_class": "text",
    "reason": "text",
}
_M = len(_CHANGE_COLUMNS)
_E = len(_EVENT_COLUMNS)
_CHANGE_KINDS = _kinds(_CHANGE_COLUMNS)
_EVENT_KINDS = _kinds(_EVENT_COLUMNS)


# Status changes and their events, one statement. A provider's report that the message was
# delivered may arrive before the worker has stored its own outcome of the send: the report
# is the later truth. And an outcome never overwrites one of a later attempt: a retry can
# run (its message published before the first outcome is stored) and store its outcome
# first. A cancelled delivery stays cancelled: a cancellation leaves a delivery in flight
# alone (store/deliveries.py ``stop_waiting``), so only an attempt that was never claimed,
# or whose claim had lapsed, meets one.
#
# The ids go twice: packed in the first parameter with the other columns, and as an array
# in the last, for `d.id = ANY(...)`: ids known when the statement is planned, so that only
# the partitions holding them are read (store/retention.py); a batch of one day names that
# day's partition instead, and is planned once (store/day_partitions.py).
def _write_changes_sql(packed: bool, table: str) -> str:
    return (
        f"WITH changed AS (UPDATE {table} AS d SET status = v.status, "
        "attempts = v.attempts, reason = v.reason, last_error = v.last_error, "
        "provider_message_id = v.provider_message_id, scheduled_for = v.scheduled_for, "
        f"sent_at = v.sent_at, latency_ms = v.latency_ms, updated_at = ${_M + 1}::timestamptz, "
        "provider = coalesce(v.provider, d.provider), "
        # Still waiting: watched as it was; else no longer (store/sweeps.py). Unwatched,
        # as nearly every delivery is, it stays NULL: the row is written in place.
        f"watched_since = CASE WHEN v.status IN ('{DeliveryStatus.QUEUED.value}', "
        f"'{DeliveryStatus.SCHEDULED.value}') "
        "THEN d.watched_since END "
        f"FROM {_unnest(_CHANGE_COLUMNS, 1, packed)} "
        f"WHERE d.id = v.id AND d.id = ANY(${_M + _E + 2}::text[]) "
        "AND d.status <> 'delivered' AND d.attempts <= v.attempts "
        "AND d.status <> 'cancelled') "
        f"INSERT INTO delivery_events ({', '.join(_EVENT_COLUMNS)}, created_at) "
        f"SELECT {', '.join('v.' + name for name in _EVENT_COLUMNS)}, ${_M + 1}::timestamptz "
        f"FROM {_unnest(_EVENT_COLUMNS, _M + 2, packed)}"
    )


_WRITE_CHANGES = {packed: _write_changes_sql(packed, "deliveries") for packed in (True, False)}


@functools.lru_cache(maxsize=16)  # a few days at a time
def _write_changes_on(packed: bool, table: str) -> str:
    """The status update naming ``table``: ``deliveries``, or one of its day partitions
    (store/day_partitions.py), a plain table whose statement is planned once."""
    if table == "deliveries":
        return _WRITE_CHANGES[packed]
    return fixed_plan(_write_changes_sql(packed, table), grown=(table,))


def _json(value: Any) -> str:
    # Python None is stored as JSON null, as SQLAlchemy's JSON type stores it.
    return orjson.dumps(value).decode()


def _columns(rows: Iterable[Sequence[Any]], width: int) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for values, value in zip(columns, row, strict=True):
            values.append(value)
    return columns


async def store_plan(
    pg: PgPool,
    items: Sequence[Stored],
    planned_ids: Sequence[str],
    outbox_ids: Sequence[str],
    at: datetime,
) -> set[str]:
    """Insert the deliveries (``ON CONFLICT DO NOTHING``), mark the notifications planned and
    drop their outbox rows, in one statement; the ids of the deliveries inserted."""
    packed, columns = _delivery_columns(items, at)
    records = await pg.fetch(_STORE_PLAN[packed], *columns, at, list(planned_ids), list(outbox_ids))
    return {record[0] for record in records}


def _delivery_columns(items: Sequence[Stored], at: datetime) -> tuple[bool, list[Any]]:
    """The new deliveries' (made ``at``) columns of :data:`_SENT_COLUMNS`, JSON as text:
    packed if they can be, and whether they are."""
    rows = (delivery_rows.values(item, at) for item in items)
    every = _columns(rows, len(_DELIVERY_COLUMNS))
    columns = [
        [_json(value) for value in every[i]] if name in _JSON_COLUMNS else every[i]
        for i, name in zip(_SENT, _SENT_COLUMNS, strict=True)
    ]
    return _packed(_SENT_KINDS, columns)


def _packed(kinds: list[str], columns: list[list[Any]]) -> tuple[bool, list[Any]]:
    """``columns`` packed (store/packed.py) if they can be, else as arrays; and which."""
    texts = packed_columns(kinds, columns)
    return (True, list(texts)) if texts is not None else (False, list(columns))


# A chunk of a topic send's stripe: its deliveries and their events, as in _STORE_PLAN, with
# no notification or outbox row touched (store_stripe does that around it).
_INSERT_CHUNK = {
    packed: (
        f"WITH ins AS ({_new_deliveries(packed)}"
        "ON CONFLICT DO NOTHING RETURNING id, tenant_id, status, reason), "
        "ev AS (INSERT INTO delivery_events (delivery_id, tenant_id, status, detail, created_at) "
        f"SELECT id, tenant_id, status, reason, {_AT} FROM ins "
        f"WHERE status <> '{DeliveryStatus.QUEUED.value}') "
        "SELECT id FROM ins"
    )
    for packed in (True, False)
}


def _sql_list(values: Iterable[str]) -> str:
    """Statuses as an SQL list, ``('a', 'b')``: enum values, never input."""
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


_LIVE = _sql_list(
    (NotificationStatus.ACCEPTED, NotificationStatus.SCHEDULED, NotificationStatus.PROCESSING)
)
# The waiting delivery statuses as an SQL list, for the statements of both stores.
WAITING_SQL = _sql_list(WAITING_STATUSES)

# A stripe's cursor moves only from where this planner read it: a chunk is stored once, by
# one planner. Stripes have a row each, so stripes of one send never wait for each other.
_ADVANCE_STRIPE = (
    "UPDATE topic_stripes SET planned_through = $3, done_at = $4 "
    "WHERE notification_id = $1 AND stripe = $2 AND done_at IS NULL "
    "AND planned_through IS NOT DISTINCT FROM $5 RETURNING stripe"
)


class StripeChunk(NamedTuple):
    """A chunk of a topic send's stripe, as it is stored: the stripe's cursor moves from
    ``after`` to ``through`` (the stripe is done when ``done``) at ``at``, and the outbox
    row's time moves to ``retry_at`` (the relay picks the send up again only if planning
    stalls)."""

    notification_id: str
    stripe: int
    after: str | None
    through: str | None
    done: bool
    at: datetime
    retry_at: datetime


async def store_stripe(pg: PgPool, items: Sequence[Stored], chunk: StripeChunk) -> set[str] | None:
    """One chunk of a topic send's stripe, in one transaction: the notification is still
    live (a share lock: a cancellation waits for this chunk, or this chunk for it), the
    stripe's cursor moves, the deliveries are inserted, and the outbox row's time moves.
    None if the send was cancelled or the cursor had moved (another planner stored this
    chunk)."""
    notification_id, stripe, at = chunk.notification_id, chunk.stripe, chunk.at
    async with pg.connection() as conn, conn.transaction():
        live = await conn.fetchval(
            f"SELECT id FROM notifications WHERE id = $1 AND status IN {_LIVE} FOR SHARE",
            notification_id,
        )
        if live is None:
            return None
        moved = await conn.fetchval(
            _ADVANCE_STRIPE,
            notification_id,
            stripe,
            chunk.through,
            at if chunk.done else None,
            chunk.after,
        )
        if moved is None:
            return None
        packed, columns = _delivery_columns(items, at)
        records = await conn.fetch(_INSERT_CHUNK[packed], *columns, at)
        # Last: the outbox row is the one row the stripes of a send all write.
        await conn.execute(
            "UPDATE outbox SET available_at = $2 WHERE notification_id = $1",
            notification_id,
            chunk.retry_at,
        )
    return {record[0] for record in records}


# A topic send whose stripes are all done is planned: the notification says so, and its
# stripes and outbox row go. Run after a stripe's last chunk committed, by each planner
# that finished one: the last of them to commit sees every stripe done.
_FINISH_TOPIC = (
    "WITH done AS (UPDATE notifications SET planned_at = $2 "
    f"WHERE id = $1 AND planned_at IS NULL AND status IN {_LIVE} AND NOT EXISTS "
    "(SELECT 1 FROM topic_stripes WHERE notification_id = $1 AND done_at IS NULL) "
    "RETURNING id), "
    "stripes AS (DELETE FROM topic_stripes WHERE notification_id IN (SELECT id FROM done)) "
    "DELETE FROM outbox WHERE notification_id IN (SELECT id FROM done) "
)


async def finish_topic(pg: PgPool, notification_id: str, at: datetime) -> None:
    await pg.execute(_FINISH_TOPIC, notification_id, at)


async def write_changes(
    pg: PgPool,
    changes: Sequence[tuple[Any, ...]],
    events: Sequence[tuple[Any, ...]],
    at: datetime,
) -> None:
    """Update deliveries from rows of (id, status, attempts, reason, last_error, provider
    message id, scheduled for, sent at, provider, latency ms) — ids distinct — and store
    the events (delivery id, tenant id, status, detail, attempt, provider, latency ms,
    error class, reason), all at ``at``."""
    columns = _columns(changes, _M)
    event_columns = _columns(events, _E)
    packed, values = _packed(_CHANGE_KINDS + _EVENT_KINDS, columns + event_columns)
    await day_partitions.fetch(
        pg,
        columns[0],
        functools.partial(_write_changes_on, packed),
        *values[:_M],
        at,
        *values[_M:],
        columns[0],
    )


# An attempt's claim, right before its provider call: for each (delivery, attempt n) a row
# of `delivery_claims` holding attempt n under a lease on the database's clock, written
# only if the delivery waits for attempt n (`attempts = n - 1`; or `n - 2` with attempt
# n - 1 claimed, its outcome not stored yet: the retry was published first), its
# notification is not cancelled, and no claim holds it: none yet, or one of an earlier
# attempt, or of attempt n by a worker whose lease ran out (it died before storing an
# outcome). The ids claimed. One narrow insert per delivery: the delivery's own row, wide
# and in six indexes, is written once, by the attempt's outcome.
#
# Each row's notification and earlier claim are read by primary key (a subquery per row,
# which the planner does not turn into a join): without fresh statistics a join may start
# from every cancelled notification, or every claim, instead. A cancellation marks each
# delivery it cancels in `delivery_claims` (store/deliveries.py ``stop_waiting``): a mark
# committed after this statement's snapshot is a conflict that this insert waits for and
# then finds `cancelled` (the conflict's conditions are checked on its newest version).
#
# The condition on the delivery's state is a CASE expression on purpose: written as a
# plain predicate, PostgreSQL derives `status IN (...)` from it and, with stale statistics
# (a new day's partition, or a server without autovacuum), ANDs the status index with the
# primary key -- reading every queued delivery of the day for a batch of twenty (10 ms a
# call at 300,000 rows, measured). As CASE it can only be checked on the rows the primary
# key finds.
_HELD = "(SELECT p.attempt FROM delivery_claims AS p WHERE p.id = d.id)"
_NOTE = "(SELECT n.status FROM notifications AS n WHERE n.id = d.notification_id)"


def _claim_sql(table: str) -> str:
    return (
        "INSERT INTO delivery_claims AS k (id, attempt, leased_until) "
        "SELECT c.id, c.attempt, now() + make_interval(secs => $3) "
        "FROM unnest($1::text[], $2::int[]) AS c(id, attempt) "
        f"JOIN {table} AS d ON d.id = c.id AND d.id = ANY($1::text[]) "
        f"WHERE CASE WHEN d.status IN {WAITING_SQL} THEN d.attempts = c.attempt - 1 "
        f"OR (d.attempts = c.attempt - 2 AND {_HELD} = c.attempt - 1) ELSE false END "
        f"AND {_NOTE} IS DISTINCT FROM 'cancelled' "
        "ON CONFLICT (id) DO UPDATE SET attempt = EXCLUDED.attempt, "
        "leased_until = EXCLUDED.leased_until "
        "WHERE NOT k.cancelled AND (k.attempt < EXCLUDED.attempt "
        "OR (k.attempt = EXCLUDED.attempt AND k.leased_until < now())) "
        "RETURNING k.id"
    )


_CLAIM = _claim_sql("deliveries")


@functools.lru_cache(maxsize=16)  # a few days at a time
def _claim_on(table: str) -> str:
    if table == "deliveries":
        return _CLAIM
    return fixed_plan(_claim_sql(table), grown=(table, "notifications"))


async def claim(pg: PgPool, items: Sequence[tuple[str, int]], lease: float) -> set[str]:
    """Claim each (delivery id, attempt) of ``items`` (ids distinct) for ``lease`` seconds;
    the ids claimed."""
    ids, attempts = _columns(items, 2)
    claimed = await day_partitions.fetch(pg, ids, _claim_on, ids, attempts, lease)
    return {record[0] for record in claimed}
