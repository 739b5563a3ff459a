"""The windows of workflow `digest` steps: opened by the first run to reach a step with a
key, joined by the runs that reach it with that key while it is open, closed by the run
that opened it (its carrier) when the window ends.

Every change is made for a batch of runs in one transaction, together with the runs' own
rows (:func:`settle`), and only for the runs still held under the lease they were advanced
under: a run taken again after its advancer died finds either nothing done (and does it)
or its step stored with the outcome (and goes on from there), so no trigger is counted
twice and no window opened twice. On PostgreSQL the windows' rows are locked while they
are read and changed: a run joining a window that is being closed waits for the close,
then finds no window and opens a new one. SQLite's writers take turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.runs import ENDED
from clarion.store import runs as run_store
from clarion.store.db import as_utc, write_tx
from clarion.store.sql import chunks, execute_many, insert_ignoring_conflicts
from clarion.store.tables import workflow_digest_events, workflow_digests, workflow_runs

# How many times a batch tries again for the runs whose window closed between the insert
# that found it and the read (PostgreSQL, a close committing in between).
_TRIES = 5
_COUNT = (
    update(workflow_digests)
    .where(
        workflow_digests.c.tenant_id == bindparam("b_tenant_id"),
        workflow_digests.c.workflow == bindparam("b_workflow"),
        workflow_digests.c.step == bindparam("b_step"),
        workflow_digests.c.key == bindparam("b_key"),
    )
    .values(count=bindparam("b_count"))
)

# A window: (tenant, workflow, step, key).
Window = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class Entering:
    """A run reaching a digest step: the window its key names, when that window would
    close if this run opens it, and the run's trigger data."""

    run_id: str
    turn: int
    window: Window
    closes_at: datetime
    data: Any


@dataclass(frozen=True, slots=True)
class Closing:
    """A carrier whose window is over: the run and its digest step."""

    run_id: str
    turn: int
    step: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The run opened the window (or had opened it): it carries it until ``closes_at``."""

    closes_at: datetime


@dataclass(frozen=True, slots=True)
class Joined:
    """The run joined the window ``into`` carries, as its ``seq``-th trigger."""

    into: str
    seq: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The carrier closed its window: the triggers counted and the data kept, in order."""

    count: int
    events: list[Any]


Outcome = Opened | Joined | Closed
# What the runs' rows become, given the outcomes (rows as store/runs.py ``save`` takes).
Settle = Callable[[dict[str, Outcome]], list[dict[str, Any]]]


async def settle(
    engine: AsyncEngine,
    entering: Sequence[Entering],
    closing: Sequence[Closing],
    now: datetime,
    max_events: int,
    rows_of: Settle,
) -> dict[str, Outcome]:
    """Close the windows of ``closing``, then open or join those of ``entering``, and store
    the runs' rows ``rows_of`` makes of the outcomes, all in one transaction. The outcome
    of each run still held under its turn; a run missing from the answer was cancelled or
    taken by another advancer meanwhile, and nothing was done for it."""
    turns = {item.run_id: item.turn for item in entering}
    turns.update((item.run_id, item.turn) for item in closing)
    if not turns:
        return {}
    async with write_tx(engine) as conn:
        held = await run_store.owned(conn, turns)
        found: dict[str, Outcome] = {}
        found.update(await _close(conn, [c for c in closing if c.run_id in held]))
        found.update(await _enter(conn, [e for e in entering if e.run_id in held], now, max_events))
        await run_store.save_in(conn, rows_of(found))
    return found


async def _close(conn: AsyncConnection, closing: Sequence[Closing]) -> dict[str, Outcome]:
    """Delete the carriers' windows and the triggers they collected: the count and the
    data of each. A run joining one of them now waits for this transaction (PostgreSQL),
    then opens a new window."""
    w, e = workflow_digests, workflow_digest_events
    counts: dict[str, int] = {}
    events: dict[str, list[Any]] = {}
    for part in chunks([(c.run_id, c.step) for c in closing], 500):
        gone = await conn.execute(
            delete(w).where(tuple_(w.c.run_id, w.c.step).in_(part)).returning(w.c.run_id, w.c.count)
        )
        counts.update((run_id, int(count)) for run_id, count in gone)
        which = tuple_(e.c.carrier_id, e.c.step).in_(part)
        kept = await conn.execute(
            select(e.c.carrier_id, e.c.data).where(which).order_by(e.c.carrier_id, e.c.seq)
        )
        for row in kept:
            events.setdefault(row.carrier_id, []).append(row.data)
        await conn.execute(delete(e).where(which))
    found: dict[str, Outcome] = {}
    for item in closing:
        kept_data = events.get(item.run_id, [])
        # A window gone without its carrier closing it (pruned long after it ended) still
        # counts its carrier's own trigger.
        count = counts.get(item.run_id, max(len(kept_data), 1))
        found[item.run_id] = Closed(count, kept_data)
    return found


async def _enter(
    conn: AsyncConnection, entering: Sequence[Entering], now: datetime, max_events: int
) -> dict[str, Outcome]:
    """Open a window for each key with none open (the first run of the batch with the key
    opens it), and join the others to the open ones, in the batch's order."""
    found: dict[str, Outcome] = {}
    left = list(entering)
    for _ in range(_TRIES):
        if not left:
            return found
        left = await _enter_once(conn, left, now, max_events, found)
    if left:
        raise RuntimeError(f"{len(left)} runs found their digest windows closing every time")
    return found


async def _enter_once(
    conn: AsyncConnection,
    entering: list[Entering],
    now: datetime,
    max_events: int,
    found: dict[str, Outcome],
) -> list[Entering]:
    """One try of :func:`_enter`; the runs that found neither a window to join nor one
    they opened (it closed in between), to try again."""
    w, e = workflow_digests, workflow_digest_events
    first: dict[Window, Entering] = {}
    for item in entering:
        first.setdefault(item.window, item)
    # In key order, so that two advancers lock the windows they share in the same order.
    keys = sorted(first)
    opening = [
        {
            "tenant_id": window[0],
            "workflow": window[1],
            "step": window[2],
            "key": window[3],
            "run_id": first[window].run_id,
            "closes_at": first[window].closes_at,
            "count": 1,
            "created_at": now,
        }
        for window in keys
    ]
    for part in chunks(opening, 1000):
        await execute_many(conn, insert_ignoring_conflicts(conn, w), part)
    windows = await _windows(conn, keys)
    stale = await _ended_carriers(conn, {row["run_id"] for row in windows.values()})
    if stale:
        await run_store.drop_windows(conn, sorted(stale))
    counts = {k: row["count"] for k, row in windows.items() if row["run_id"] not in stale}
    changed: set[Window] = set()
    events: list[dict[str, Any]] = []
    again: list[Entering] = []
    for item in entering:
        row = windows.get(item.window)
        if row is None or item.window not in counts:
            again.append(item)
            continue
        carrier = row["run_id"]
        step = item.window[2]
        if carrier == item.run_id:
            found[item.run_id] = Opened(as_utc(row["closes_at"]) or item.closes_at)
            seq = 1
        else:
            counts[item.window] += 1
            changed.add(item.window)
            seq = counts[item.window]
            found[item.run_id] = Joined(carrier, seq)
        if seq <= max_events:
            events.append(
                {
                    "carrier_id": carrier,
                    "step": step,
                    "seq": seq,
                    "run_id": item.run_id,
                    "data": item.data,
                    "created_at": now,
                }
            )
    counted = [
        {
            "b_tenant_id": k[0],
            "b_workflow": k[1],
            "b_step": k[2],
            "b_key": k[3],
            "b_count": counts[k],
        }
        for k in sorted(changed)
    ]
    for part in chunks(counted, 1000):
        await execute_many(conn, _COUNT, part)
    for part in chunks(events, 1000):
        await execute_many(conn, insert_ignoring_conflicts(conn, e), part)
    return again


async def _windows(conn: AsyncConnection, keys: list[Window]) -> dict[Window, dict[str, Any]]:
    """The open windows of these keys, locked on PostgreSQL until the transaction ends."""
    w = workflow_digests
    found: dict[Window, dict[str, Any]] = {}
    for part in chunks(keys, 500):
        query = (
            select(w)
            .where(tuple_(w.c.tenant_id, w.c.workflow, w.c.step, w.c.key).in_(part))
            .order_by(w.c.tenant_id, w.c.workflow, w.c.step, w.c.key)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for row in (await conn.execute(query)).mappings():
            found[(row["tenant_id"], row["workflow"], row["step"], row["key"])] = dict(row)
    return found


async def _ended_carriers(conn: AsyncConnection, carriers: set[str]) -> set[str]:
    """Those of these carriers that have ended or are gone (failed, erased): their windows
    would never close, so a trigger must not join them."""
    r = workflow_runs
    live: set[str] = set()
    for part in chunks(sorted(carriers), 1000):
        query = select(r.c.id).where(r.c.id.in_(part), r.c.status.not_in(sorted(ENDED)))
        live.update((await conn.execute(query)).scalars())
    return carriers - live


async def forget_recipient(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    """Erasure: the windows a recipient's runs carry, and every trigger of theirs collected
    in any window (before their runs are deleted)."""
    r, e = workflow_runs, workflow_digest_events
    theirs = select(r.c.id).where(
        and_(r.c.tenant_id == tenant_id, r.c.recipient_id == recipient_id)
    )
    carried = list((await conn.execute(theirs)).scalars())
    await run_store.drop_windows(conn, carried)
    for part in chunks(carried, 1000):
        await conn.execute(delete(e).where(e.c.run_id.in_(part)))
