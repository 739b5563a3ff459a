"""The inbox's lists are index ranges on both databases: each page reads a page, however
many messages the recipient has (100,000 in ``benchmarks/inbox.py``), and the counts are
one row."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Select

from clarion.store import inbox
from clarion.store.pages import Position
from clarion.store.tables import inbox_counters
from harness import Harness


def _feed_query(status: str | None, cursor: Position | None) -> Select[Any]:
    captured: list[Select[Any]] = []
    inbox.feed_query("ten_x", "u-1", status=status, cursor=cursor, limit=50, sink=captured.append)
    return captured[0]


async def _plan(app: Harness, query: Any) -> str:
    engine = app.ctx.engine
    dialect = postgresql.dialect() if engine.dialect.name == "postgresql" else sqlite.dialect()
    compiled = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Empty tables make a sequential scan cheapest: ask whether an index serves it.
            await conn.exec_driver_sql("SET enable_seqscan = off")
            rows = (await conn.exec_driver_sql(f"EXPLAIN {compiled}")).all()
        else:
            rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
    return "\n".join(str(r[-1]) for r in rows)


async def test_every_list_is_an_index_range_without_a_sort(app: Harness) -> None:
    cursor = Position(inbox.utcnow(), "msg_x")
    expected = {
        None: "ix_inbox_messages_feed",
        "unread": "ix_inbox_messages_status",
        "read": "ix_inbox_messages_status",
        "archived": "ix_inbox_messages_status",
        "all": "ix_inbox_messages_all",
    }
    for status, index in expected.items():
        for at in (None, cursor):
            plan = await _plan(app, _feed_query(status, at))
            assert index in plan, (status, plan)
            assert "TEMP B-TREE" not in plan, (status, plan)
            assert "Sort" not in plan, (status, plan)


async def test_counts_are_one_row(app: Harness) -> None:
    from sqlalchemy import select

    c = inbox_counters
    query = select(c).where(c.c.tenant_id == "ten_x", c.c.recipient_id == "u-1")
    plan = await _plan(app, query)
    assert "pk_inbox_counters" in plan or "sqlite_autoindex_inbox_counters" in plan, plan
