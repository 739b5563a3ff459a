"""Workflow runs: stored when a workflow send is planned, leased while they are advanced,
woken when due, cancelled by notification or by cancellation key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.delivery import Stored
from clarion.domain.runs import ENDED, EXITED, SKIPPED, DeliveryFacts, RunStatus, step_status
from clarion.store import deliveries as delivery_store
from clarion.store import delivery_rows, tracking
from clarion.store.db import as_utc, write_tx
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, execute_many, grouped, insert_ignoring_conflicts
from clarion.store.tables import (
    deliveries,
    delivery_events,
    inbox_messages,
    notifications,
    workflow_digest_events,
    workflow_digests,
    workflow_runs,
)

_ENDED = sorted(ENDED)
_SAVE = (
    update(workflow_runs)
    .where(
        workflow_runs.c.id == bindparam("b_id"),
        workflow_runs.c.turn == bindparam("b_turn"),
        # No IN list: the statement runs with executemany.
        *(workflow_runs.c.status != status for status in _ENDED),
    )
    .values(
        status=bindparam("b_status"),
        step=bindparam("b_step"),
        steps=bindparam("b_steps", type_=workflow_runs.c.steps.type),
        wake_at=bindparam("b_wake_at"),
        updated_at=bindparam("b_updated_at"),
    )
)


async def insert(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Store new runs, leased for their first advance by whoever stores them (their turn
    1, their wake time the lease's end); a run stored already, by a plan replayed, is left
    as it is. The ids of the runs that are new."""
    ids = [row["id"] for row in rows]
    present: set[str] = set()
    for part in chunks(ids, 1000):
        query = select(workflow_runs.c.id).where(workflow_runs.c.id.in_(part))
        present.update((await conn.execute(query)).scalars())
    fresh = [row for row in rows if row["id"] not in present]
    for part in chunks(fresh, 1000):
        await execute_many(conn, insert_ignoring_conflicts(conn, workflow_runs), part)
    return {row["id"] for row in fresh}


# PostgreSQL's take of due runs, one fixed statement on asyncpg; asked first whether any is
# due, a cheap read of the wake-time index, so that the wakers' idle looks write nothing.
_ANY_DUE = "SELECT EXISTS (SELECT 1 FROM workflow_runs WHERE wake_at <= $1)"
_TAKE_DUE = (
    "UPDATE workflow_runs AS r SET wake_at = $2, turn = r.turn + 1 "
    "FROM (SELECT id FROM workflow_runs WHERE wake_at <= $1 ORDER BY wake_at LIMIT $3 "
    "FOR UPDATE SKIP LOCKED) AS due WHERE r.id = due.id RETURNING r.*"
)


async def take_due(
    engine: AsyncEngine,
    now: datetime,
    lease: float,
    limit: int,
    pg: PgPool | None = None,
    *,
    look_first: bool = True,
) -> list[dict[str, Any]]:
    """Lease up to ``limit`` runs due by ``now`` (oldest due first) for ``lease`` seconds:
    each comes back with its turn counted, and only that turn's save is stored. A run whose
    advancer died is due again when its lease ends. With none due, nothing is written:
    ``look_first`` asks whether any is due before the update is tried (on PostgreSQL;
    not worth it when the last take found a full batch)."""
    r = workflow_runs
    until = now + timedelta(seconds=lease)
    if pg is not None:
        if look_first:
            [[due_now]] = await pg.fetch(_ANY_DUE, now)
            if not due_now:
                return []
        return [dict(row) for row in await pg.fetch(_TAKE_DUE, now, until, limit)]
    due = select(r.c.id).where(r.c.wake_at <= now).order_by(r.c.wake_at).limit(limit)
    async with engine.connect() as conn:
        if (await conn.execute(due.limit(1))).first() is None:
            return []
    # SQLite (PostgreSQL always has ``pg``): its writers take turns, so what is read here
    # is what is leased.
    async with write_tx(engine) as conn:
        ids = list((await conn.execute(due)).scalars())
        if not ids:
            return []
        await conn.execute(
            update(r).where(r.c.id.in_(ids)).values(wake_at=until, turn=r.c.turn + 1)
        )
        rows = await conn.execute(select(r).where(r.c.id.in_(ids)))
        return [dict(row) for row in rows.mappings()]


async def save(
    engine: AsyncEngine, rows: Sequence[dict[str, Any]], pg: PgPool | None = None
) -> None:
    """Store what advancing runs made of them: each row's ``id``, ``turn`` (the one its
    lease gave), ``status``, ``step``, ``steps`` and ``wake_at``. A run cancelled meanwhile,
    or leased again since (its lease ran out), is left as it is. On PostgreSQL one
    statement for the batch."""
    if not rows:
        return
    if pg is not None:
        await pg.execute(_SAVE_MANY, *_columns(rows), sorted(ENDED))
        return
    async with write_tx(engine) as conn:
        await save_in(conn, rows)


# store/bulk.py's way: one array per column, unpacked by unnest.
_SAVE_MANY = (
    "UPDATE workflow_runs AS r SET status = v.status, step = v.step, steps = v.steps::json, "
    "wake_at = v.wake_at, updated_at = v.updated_at "
    "FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[], "
    "$6::timestamptz[], $7::timestamptz[]) AS v(id, turn, status, step, steps, wake_at, "
    "updated_at) "
    "WHERE r.id = v.id AND r.turn = v.turn AND r.status <> ALL($8::text[])"
)


def _columns(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    names = ("id", "turn", "status", "step", "steps", "wake_at", "updated_at")
    columns: list[list[Any]] = [[row[name] for row in rows] for name in names]
    columns[2] = [str(status) for status in columns[2]]
    columns[4] = [orjson.dumps(steps).decode() for steps in columns[4]]
    return columns


async def save_in(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """:func:`save` in a transaction of the caller's."""
    params = [
        {
            "b_id": row["id"],
            "b_turn": row["turn"],
            "b_status": row["status"],
            "b_step": row["step"],
            "b_steps": row["steps"],
            "b_wake_at": row["wake_at"],
            "b_updated_at": row["updated_at"],
        }
        for row in rows
    ]
    for part in chunks(params, 1000):
        await execute_many(conn, _SAVE, part)


async def owned(conn: AsyncConnection, turns: dict[str, int]) -> set[str]:
    """Which of these runs (id → the turn of their lease) are still held under that turn
    and have not ended. On PostgreSQL their rows are locked until the transaction ends, so
    neither a cancellation nor another advancer changes them meanwhile (SQLite's writers
    take turns)."""
    r = workflow_runs
    found: set[str] = set()
    for part in chunks(sorted(turns), 1000):
        query = select(r.c.id, r.c.turn, r.c.status).where(r.c.id.in_(part)).order_by(r.c.id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found.update(
            row.id
            for row in await conn.execute(query)
            if row.turn == turns[row.id] and row.status not in ENDED
        )
    return found


async def drop_windows(conn: AsyncConnection, carriers: Sequence[str]) -> None:
    """Delete the open digest windows these runs carry, and the triggers collected in
    them: a window whose carrier will not close it must not collect more."""
    w, e = workflow_digests, workflow_digest_events
    for part in chunks(list(carriers), 1000):
        await conn.execute(delete(w).where(w.c.run_id.in_(part)))
        await conn.execute(delete(e).where(e.c.carrier_id.in_(part)))


async def facts(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, DeliveryFacts]:
    """What expressions may read of these deliveries: their status, of in-app ones
    whether the message was seen, read or archived, and of email ones whether it was
    opened or clicked (a click counts as an open)."""
    found: dict[str, DeliveryFacts] = {}
    if not ids:
        return found
    d, m = deliveries, inbox_messages
    async with engine.connect() as conn:
        for part in chunks(list(dict.fromkeys(ids)), 1000):
            query = (
                select(
                    d.c.id,
                    delivery_store.shown_status(d).label("status"),
                    m.c.seen_at,
                    m.c.read_at,
                    m.c.archived_at,
                    _tracked(d, tracking.TRACKED).label("opened"),
                    _tracked(d, (tracking.CLICKED,)).label("clicked"),
                )
                .select_from(d.outerjoin(m, m.c.delivery_id == d.c.id))
                .where(d.c.id.in_(part))
            )
            for row in await conn.execute(query):
                found[row.id] = DeliveryFacts(
                    status=row.status,
                    # Reading or archiving a message is seeing it.
                    seen=any(t is not None for t in (row.seen_at, row.read_at, row.archived_at)),
                    read=row.read_at is not None or row.archived_at is not None,
                    archived=row.archived_at is not None,
                    opened=bool(row.opened),
                    clicked=bool(row.clicked),
                )
    return found


def _tracked(d: Any, events: tuple[str, ...]) -> Any:
    """Whether an email delivery has one of these events (store/tracking.py): a probe of
    ``ix_delivery_events_delivery_id``, made only for email."""
    e = delivery_events
    return and_(
        d.c.channel == "email",
        exists().where(e.c.delivery_id == d.c.id, e.c.status.in_(events)),
    )


async def still_waiting(engine: AsyncEngine, ids: Sequence[str]) -> list[Stored]:
    """Those of these deliveries that wait and are not being sent (a run's step stored by
    an advance that did not get to publish them), with their notification's traceparent."""
    d, n = deliveries, notifications
    found: list[Stored] = []
    async with engine.connect() as conn:
        for part in chunks(list(dict.fromkeys(ids)), 1000):
            query = (
                select(d, n.c.trace)
                .select_from(d.outerjoin(n, n.c.id == d.c.notification_id))
                .where(
                    d.c.id.in_(part),
                    d.c.status.in_(delivery_store.WAITING),
                    ~delivery_store.in_flight(d),
                )
            )
            rows = await conn.execute(query)
            found.extend(delivery_rows.stored_of(row) for row in rows.mappings())
    return found


async def cancel(
    conn: AsyncConnection, which: ColumnElement[bool], now: datetime
) -> list[tuple[str, str]]:
    """End the runs ``which`` selects that have not ended, and cancel their deliveries that
    wait (``stop_waiting``: none in flight is touched, and none cancelled is sent after):
    the (notification, recipient) of every run cancelled."""
    r = workflow_runs
    live = and_(which, r.c.status.not_in(_ENDED))
    found = (
        await conn.execute(select(r.c.id, r.c.notification_id, r.c.recipient_id).where(live))
    ).all()
    if not found:
        return []
    for part in chunks([row.id for row in found], 1000):
        await conn.execute(
            update(r)
            .where(r.c.id.in_(part), r.c.status.not_in(_ENDED))
            .values(status=RunStatus.CANCELLED, wake_at=None, updated_at=now)
        )
    # A cancelled run closes no digest window: the one it carries goes (the runs that
    # joined it stay `digested`), and the next trigger opens a new one.
    await drop_windows(conn, [row.id for row in found])
    pairs = [(row.notification_id, row.recipient_id) for row in found]
    d = deliveries
    for nid, rids in grouped(pairs).items():
        for part in chunks(rids, 1000):
            await delivery_store.stop_waiting(
                conn, and_(d.c.notification_id == nid, d.c.recipient_id.in_(part)), now
            )
    return pairs


async def cancel_by_key(
    engine: AsyncEngine,
    tenant_id: str,
    workflow: str,
    key: str,
    recipient_ids: Sequence[str] | None,
    now: datetime,
) -> int:
    """Cancel a workflow's runs with this cancellation key (of these recipients only, if
    given) that have not ended; how many."""
    r = workflow_runs
    which = and_(r.c.tenant_id == tenant_id, r.c.workflow == workflow, r.c.cancellation_key == key)
    cancelled = 0
    async with write_tx(engine) as conn:
        if recipient_ids is None:
            return len(await cancel(conn, which, now))
        for part in chunks(list(dict.fromkeys(recipient_ids)), 1000):
            cancelled += len(await cancel(conn, and_(which, r.c.recipient_id.in_(part)), now))
    return cancelled


async def of_notification(
    engine: AsyncEngine, tenant_id: str, notification_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """A notification's runs, by recipient id."""
    r = workflow_runs
    query = select(r).where(r.c.notification_id == notification_id, r.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(r.c.recipient_id > after)
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(r.c.recipient_id).limit(limit))
        return [dict(row) for row in rows.mappings()]


async def cancelled_of(engine: AsyncEngine, ids: Sequence[str]) -> set[str]:
    """Which of these runs are cancelled. On PostgreSQL their rows are read under lock, so
    a cancellation being written is waited for."""
    r = workflow_runs
    found: set[str] = set()
    async with write_tx(engine) as conn:
        for part in chunks(list(ids), 1000):
            query = select(r.c.id, r.c.status).where(r.c.id.in_(part))
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            found.update(
                row.id for row in await conn.execute(query) if row.status == RunStatus.CANCELLED
            )
    return found


async def stop_deliveries(
    engine: AsyncEngine, pairs: Sequence[tuple[str, str]], now: datetime
) -> None:
    """Cancel the waiting deliveries of these (notification, recipient) pairs."""
    d = deliveries
    async with write_tx(engine) as conn:
        for nid, rids in grouped(pairs).items():
            for part in chunks(rids, 1000):
                await delivery_store.stop_waiting(
                    conn, and_(d.c.notification_id == nid, d.c.recipient_id.in_(part)), now
                )


async def next_wake(engine: AsyncEngine) -> datetime | None:
    """When the next run is due, if any waits."""
    async with engine.connect() as conn:
        r = workflow_runs
        query = select(func.min(r.c.wake_at)).where(r.c.wake_at.is_not(None))
        found = (await conn.execute(query)).scalar()
    return as_utc(found)


async def shown(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs as the API shows them (:func:`public`), each channel step's status read from
    its deliveries now."""
    ids = [d for row in rows for raw in row["steps"] or [] for d in raw.get("deliveries", ())]
    known = await facts(engine, ids) if ids else {}
    return [public(row, known) for row in rows]


def _step_status(raw: dict[str, Any], known: dict[str, DeliveryFacts]) -> str:
    seen = [known[d] for d in raw.get("deliveries", ()) if d in known]
    return step_status(seen) if seen and raw["status"] not in (SKIPPED, EXITED) else raw["status"]


def public(row: dict[str, Any], known: dict[str, DeliveryFacts]) -> dict[str, Any]:
    """A run as the API shows it: where it stands (the step it is at, and until when it
    waits), and each step reached with its outcome and deliveries."""
    steps = [
        {
            "id": raw["id"],
            "status": _step_status(raw, known),
            "started_at": _moment(raw["at"]),
            "ended_at": _moment(raw.get("ended_at")),
            "delivery_ids": list(raw.get("deliveries", ())),
            **({"until": _moment(raw["until"])} if raw.get("until") else {}),
            **({"into": raw["into"]} if raw.get("into") else {}),
            **({"count": raw["count"]} if raw.get("count") is not None else {}),
        }
        for raw in row["steps"] or []
    ]
    live = row["status"] not in ENDED
    current = steps[-1] if live and steps and steps[-1]["ended_at"] is None else None
    return {
        "id": row["id"],
        "recipient_id": row["recipient_id"],
        "workflow": row["workflow"],
        "version": row["version"],
        "status": row["status"],
        "step": current["id"] if current else None,
        # A delay's end (a run is woken ahead of the end of some: pipeline/runs.py), or
        # when a waiting step looks again.
        "waiting_until": None
        if row["status"] != RunStatus.WAITING
        else current["until"]
        if current is not None and current.get("until") is not None
        else as_utc(row["wake_at"]),
        "cancellation_key": row["cancellation_key"],
        "steps": steps,
        "created_at": as_utc(row["created_at"]),
        "updated_at": as_utc(row["updated_at"]),
    }


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
