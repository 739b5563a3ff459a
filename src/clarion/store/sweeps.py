"""What the sweeper finds: deliveries left waiting too long.

A delivery's status is in no index of ``deliveries``, so that PostgreSQL writes an
attempt's outcome in place, on the same page and without an index entry (migration 0038).
The sweeper cannot ask for "every delivery still waiting" then; it watches instead.

Each pass reads the deliveries made since the last pass up to ``sweep_after`` ago, tenant
by tenant along ``ix_deliveries_tenant_created``, and marks those still waiting
(``watched_since``). Nearly every delivery is sent within its first minutes, so the mark is
rare, and the outcome that ends a delivery's wait clears it (store/bulk.py, store/
deliveries.py): an index of only the marked (``ix_deliveries_watched_since``, partial) is
where the stale are looked for. A delivery put back in the queue after its time was passed
(a replayed dead letter) is marked by what puts it back. Where the pass has come to is
``sweeps.swept_until``; each pass reads again the last ``overlap`` before it, for a row
committed a little after the time it was made at.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.delivery import Stored
from clarion.store import delivery_rows
from clarion.store.db import as_utc, write_tx
from clarion.store.deliveries import WAITING, in_flight, with_trace
from clarion.store.sql import chunks, insert_ignoring_conflicts
from clarion.store.tables import deliveries, sweeps, tenants

# The most of deliveries' making time one pass reads: a pass after a long pause catches
# up in steps of this, one after the other.
SPAN = timedelta(minutes=1)
# How much of what the last pass read a pass reads again, at most (no more than
# ``sweep_after`` itself): a row committed that much after the time it was made at is still
# read. With the default ``sweep_after`` of five minutes and a pass every 30 seconds, a
# fifteenth of the rows are read twice.
OVERLAP = timedelta(seconds=2)
_ROW = 1


async def _no_scans(conn: AsyncConnection) -> None:
    """No sequential scan for the rest of the transaction (PostgreSQL). Both of the
    sweeper's reads want an index: a range of each tenant's new deliveries, the partial
    index of the watched. Without statistics (a table autovacuum has not analysed yet) the
    planner takes ``watched_since IS NOT NULL`` to hold for nearly every row, and would
    read every partition whole instead."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL enable_seqscan = off"))


async def _swept_until(conn: AsyncConnection) -> datetime | None:
    query = select(sweeps.c.swept_until).where(sweeps.c.id == _ROW)
    return as_utc((await conn.execute(query)).scalar())


def _newly_waiting(conn: AsyncConnection, since: datetime, until: datetime) -> Any:
    """The ids of deliveries made after ``since`` and up to ``until`` still waiting and not
    watched: each tenant's range of ``ix_deliveries_tenant_created``."""
    d = deliveries
    conditions = (
        d.c.created_at > since,
        d.c.created_at <= until,
        d.c.status.in_(WAITING),
        d.c.watched_since.is_(None),
    )
    if conn.dialect.name == "postgresql":
        # One index range per tenant, whatever the planner's statistics say: LATERAL, and
        # OFFSET 0 so that the subquery is not pulled up into a join it may hash.
        per_tenant = (
            select(d.c.id).where(d.c.tenant_id == tenants.c.id, *conditions).offset(0).lateral("w")
        )
        return select(per_tenant.c.id).select_from(tenants).join(per_tenant, true())
    # SQLite: the same ranges, by the index named (its planner would otherwise read every
    # delivery and look its tenant up).
    return (
        select(d.c.id)
        .select_from(tenants)
        .join(d, d.c.tenant_id == tenants.c.id)
        .where(*conditions)
        .with_hint(d, "INDEXED BY ix_deliveries_tenant_created", "sqlite")
    )


async def watch_new(
    engine: AsyncEngine, now: datetime, until: datetime, overlap: timedelta
) -> bool:
    """Mark (``now``) the deliveries made since the last pass up to ``until`` that still
    wait, and move the pass on: by at most :data:`SPAN`. Whether it stopped short of
    ``until`` (call again)."""
    async with write_tx(engine) as conn:
        await _no_scans(conn)
        start = await _swept_until(conn)
        if start is None:
            # A database with no pass yet (migration 0038 starts one, and marks what waits
            # then): the pass starts here.
            row = {"id": _ROW, "swept_until": until}
            await conn.execute(insert_ignoring_conflicts(conn, sweeps), [row])
            return False
        if start >= until:
            return False
        end = min(until, start + SPAN)
        newly = (await conn.execute(_newly_waiting(conn, start - overlap, end))).scalars()
        # By id, a chunk at a time: each a range of the primary key, never a join the
        # planner could make a scan of every partition.
        for part in chunks(list(newly), 1000):
            await conn.execute(
                update(deliveries).where(deliveries.c.id.in_(part)).values(watched_since=now)
            )
        await conn.execute(
            update(sweeps)
            .where(sweeps.c.id == _ROW, sweeps.c.swept_until < end)
            .values(swept_until=end)
        )
    return end < until


async def stale(engine: AsyncEngine, older_than: datetime, limit: int) -> list[Stored]:
    """Watched deliveries waiting since before ``older_than``: neither changed nor due
    since then, and not in flight (store/deliveries.py ``in_flight``); so also those whose
    attempt's claim lapsed (its worker died in the attempt), whose outcome never came.

    A retry or a deferral due later is the broker's delayed set's to publish; only once it
    has been due for as long as a stale queued delivery is it published again here. One
    being sent under a live lease is its worker's: never published again. Longest watched
    first, along the partial index of the watched.
    """
    async with engine.begin() as conn:
        await _no_scans(conn)
        query = stale_query(older_than).limit(limit)
        return [delivery_rows.stored_of(row) for row in (await conn.execute(query)).mappings()]


def stale_query(older_than: datetime) -> Select[Any]:
    """The watched deliveries stale as of ``older_than`` (:func:`stale`), longest watched
    first."""
    d = deliveries
    return (
        with_trace()
        .where(
            d.c.watched_since.is_not(None),
            d.c.status.in_(WAITING),
            d.c.updated_at < older_than,
            (d.c.scheduled_for.is_(None)) | (d.c.scheduled_for < older_than),
            ~in_flight(d),
        )
        .order_by(d.c.watched_since)
    )
