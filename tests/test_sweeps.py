"""The sweeper without a status index: what it watches, what it finds stale, and the schema
that lets PostgreSQL write an attempt's outcome in place."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from clarion.domain.status import StatusChange
from clarion.store import dead_letters, sweeps
from clarion.store import deliveries as delivery_store
from clarion.store.db import utcnow
from clarion.store.tables import deliveries
from clarion.store.tables import sweeps as sweeps_table
from harness import Harness, planned_webhooks


async def _pass(app: Harness, until: datetime) -> int:
    """Passes up to ``until`` until caught up; how many it took."""
    passes = 1
    while await sweeps.watch_new(app.ctx.engine, utcnow(), until, sweeps.OVERLAP):
        passes += 1
    return passes


async def _watched(app: Harness, *ids: str) -> list[bool]:
    query = select(deliveries.c.id, deliveries.c.watched_since).where(deliveries.c.id.in_(ids))
    async with app.ctx.engine.connect() as conn:
        found = {row[0]: row[1] is not None for row in (await conn.execute(query)).all()}
    return [found[i] for i in ids]


async def _outcome(app: Harness, delivery_id: str, status: str, attempts: int, **more: Any) -> None:
    change = StatusChange(delivery_id, app.tenant_id, status, attempts=attempts, **more)
    await delivery_store.apply_changes(app.ctx.engine, [change], app.ctx.pg)


async def _stale_ids(app: Harness, older_than: datetime) -> set[str]:
    return {item.delivery.id for item in await sweeps.stale(app.ctx.engine, older_than, 100)}


async def test_the_pass_watches_only_what_still_waits(planned_only: Harness) -> None:
    app = planned_only
    _, [sent, waiting, retrying, dead] = await planned_webhooks(app, ["a", "b", "c", "d"])
    await _outcome(app, sent, "sent", 1, sent_at=utcnow())
    later = utcnow() + timedelta(minutes=10)
    await _outcome(app, retrying, "queued", 1, scheduled_for=later)
    await _outcome(app, dead, "dead", 3)
    # Not yet passed over: nothing is watched, so nothing is stale.
    assert await _watched(app, sent, waiting, retrying, dead) == [False] * 4
    assert await _stale_ids(app, utcnow() + timedelta(seconds=5)) == set()

    soon = utcnow() + timedelta(seconds=5)
    await _pass(app, soon)
    assert await _watched(app, sent, waiting, retrying, dead) == [False, True, True, False]
    # The one waiting is stale; the retry is not due yet.
    assert await _stale_ids(app, soon) == {waiting}
    assert await _stale_ids(app, later + timedelta(seconds=1)) == {waiting, retrying}

    # An outcome that ends the wait ends the watch; one that leaves it waiting keeps it.
    await _outcome(app, waiting, "sent", 1, sent_at=utcnow())
    await _outcome(app, retrying, "queued", 2, scheduled_for=later)
    assert await _watched(app, waiting, retrying) == [False, True]
    assert await _stale_ids(app, later + timedelta(seconds=1)) == {retrying}


async def test_a_replayed_dead_letter_is_watched_and_a_cancelled_delivery_is_not(
    planned_only: Harness,
) -> None:
    app = planned_only
    nid, [dead, waiting] = await planned_webhooks(app, ["a", "b"])
    await _outcome(app, dead, "dead", 3)
    await _pass(app, utcnow() + timedelta(seconds=5))
    assert await _watched(app, dead, waiting) == [False, True]
    # Put back in the queue long after the pass over its time: watched from then on.
    assert await dead_letters.replay_one(app.ctx.engine, app.tenant_id, dead, actor="t")
    assert await _watched(app, dead) == [True]
    assert dead in await _stale_ids(app, utcnow() + timedelta(seconds=5))
    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code in (200, 202), response.text
    assert await _watched(app, dead, waiting) == [False, False]
    assert await _stale_ids(app, utcnow() + timedelta(seconds=5)) == set()


async def test_a_pass_after_a_long_pause_catches_up_in_steps(planned_only: Harness) -> None:
    app = planned_only
    _, [waiting] = await planned_webhooks(app, ["a"])
    # The last pass came to an hour ago; the delivery was made since.
    hour_ago = utcnow() - timedelta(hours=1)
    async with app.ctx.engine.begin() as conn:
        await conn.execute(update(sweeps_table).values(swept_until=hour_ago))
    now = utcnow() + timedelta(seconds=5)
    assert await _pass(app, now) >= (now - hour_ago) / sweeps.SPAN
    assert await _watched(app, waiting) == [True]
    # Caught up: the next pass has nothing to read.
    assert not await sweeps.watch_new(app.ctx.engine, utcnow(), now, sweeps.OVERLAP)


async def test_a_database_without_a_pass_starts_one(planned_only: Harness) -> None:
    app = planned_only
    async with app.ctx.engine.begin() as conn:
        await conn.execute(sweeps_table.delete())
    now = utcnow()
    assert not await sweeps.watch_new(app.ctx.engine, now, now, sweeps.OVERLAP)
    async with app.ctx.engine.connect() as conn:
        [(until,)] = (await conn.execute(select(sweeps_table.c.swept_until))).all()
    assert until is not None


# The columns an attempt's outcome sets (store/bulk.py ``_write_changes_sql``): no index may
# hold one, or PostgreSQL writes each outcome as a new row version with an entry in every
# index. `watched_since` stays NULL for a delivery sent before the sweeper's pass over it.
_OUTCOME_COLUMNS = {*delivery_store.CHANGE_COLUMNS, "updated_at"}


async def test_no_index_of_deliveries_holds_what_an_outcome_changes(
    planned_only: Harness,
) -> None:
    app = planned_only
    if app.ctx.pg is None:
        pytest.skip("PostgreSQL's in-place updates")
    indexed = text(
        "SELECT DISTINCT a.attname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND ("
        "a.attnum = ANY(i.indkey) "
        "OR pg_get_expr(i.indpred, i.indrelid) LIKE '%' || a.attname || '%' "
        "OR pg_get_expr(i.indexprs, i.indrelid) LIKE '%' || a.attname || '%') "
        "WHERE c.relname LIKE 'deliveries%'"
    )
    fillfactors = text(
        "SELECT c.relname, c.reloptions FROM pg_inherits h JOIN pg_class c "
        "ON c.oid = h.inhrelid WHERE h.inhparent = 'deliveries'::regclass"
    )
    async with app.ctx.engine.connect() as conn:
        columns = set((await conn.execute(indexed)).scalars())
        partitions = (await conn.execute(fillfactors)).all()
    assert "tenant_id" in columns
    assert columns & _OUTCOME_COLUMNS == set()
    assert partitions
    for name, options in partitions:
        assert "fillfactor=50" in (options or []), name


async def test_the_sweepers_reads_walk_indexes(planned_only: Harness) -> None:
    app = planned_only
    engine = app.ctx.engine
    await planned_webhooks(app, ["a", "b"])
    now = utcnow()
    stale = sweeps.stale_query(now)
    async with engine.begin() as conn:
        await sweeps._no_scans(conn)
        newly = sweeps._newly_waiting(conn, now - timedelta(minutes=1), now)
        plans = []
        for query in (newly, stale):
            compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            explain = "EXPLAIN" if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
            rows = (await conn.exec_driver_sql(f"{explain} {compiled}")).all()
            plans.append("\n".join(str(row[-1]) for row in rows))
    newly_plan, stale_plan = plans
    for plan in plans:
        assert "Seq Scan on deliveries" not in plan, plan
        assert "SCAN deliveries\n" not in plan + "\n", plan
    if engine.dialect.name == "postgresql":
        # Each day partition has its copy of an index, named after its columns.
        assert "Index Cond: (((tenant_id)::text = (tenants.id)::text)" in newly_plan, newly_plan
        assert "watched_since_idx" in stale_plan, stale_plan
    else:
        assert "ix_deliveries_tenant_created" in newly_plan, newly_plan
        assert "ix_deliveries_watched_since" in stale_plan, stale_plan
