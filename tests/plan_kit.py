"""Query plans for the tests: a statement's plan on the test's database, and what the plan
of a dead-letter query must look like."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from harness import Harness

# The events' status index, or (PostgreSQL) a day partition's copy, named after its columns.
EVENTS_INDEX = re.compile(
    r"ix_delivery_events_tenant_status_created|_tenant_id_status_created_at_deliv"
)
# PostgreSQL: a delivery looked up by the id its event names, and the later events of the
# same delivery, a range of the events' primary key.
DELIVERY_BY_ID = re.compile(r"Index Cond: \(\(id\)::text = \(e(_\d+)?\.delivery_id\)::text\)")
LATER_EVENTS = re.compile(
    r"Index Cond: \(\(\(delivery_id\)::text = \(e(_\d+)?\.delivery_id\)::text\) "
    r"AND \(id > e(_\d+)?\.id\)\)"
)
# A sort node (a Merge Append's "Sort Key" merges sorted inputs, it sorts nothing).
SORT_NODE = re.compile(r"(^|->)\s*(Incremental )?Sort  \(", re.MULTILINE)


async def plan_of(app: Harness, query: Any) -> str:
    """``query``'s plan: PostgreSQL's ``EXPLAIN`` (sequential scans off: on empty tables
    they are cheapest, and the question is whether an index serves), SQLite's ``EXPLAIN
    QUERY PLAN``."""
    engine = app.ctx.engine
    postgres = engine.dialect.name == "postgresql"
    dialect = postgresql.dialect() if postgres else sqlite.dialect()
    compiled = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        if postgres:
            await conn.exec_driver_sql("SET enable_seqscan = off")
            rows = (await conn.exec_driver_sql(f"EXPLAIN {compiled}")).all()
        else:
            rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
    return "\n".join(str(r[-1]) for r in rows)


def assert_reads_dead_events(plan: str) -> None:
    """A dead-letter query's plan: a range of the events' status index, each delivery and
    its later events looked up by key, no table read whole."""
    assert EVENTS_INDEX.search(plan), plan
    assert "Seq Scan" not in plan, plan
    # SQLite: a SEARCH (a lookup) of each table, never a SCAN.
    assert not re.search(r"\bSCAN (e|d|later|deliveries|delivery_events)\b", plan), plan
    if "Index Cond" in plan:
        assert DELIVERY_BY_ID.search(plan), plan
        assert LATER_EVENTS.search(plan), plan
    else:
        assert re.search(r"SEARCH d USING INDEX \w+ \(id=\?\)", plan), plan
        assert re.search(r"SEARCH later USING INDEX \w+ \(delivery_id=\? AND rowid>\?\)", plan)
