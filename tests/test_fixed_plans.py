"""The statements planned once per connection (store/pg.py ``fixed_plan``) read every table
by an index, whatever the statistics were when their plan was made: on a new database,
and on one whose tables hold rows and have been analyzed. A plan that read a table whole
would be kept for the connection's life, however large the table grew."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest

from clarion.store import bulk, intake, planning  # noqa: F401  (their statements register themselves)
from clarion.store import deliveries as delivery_store
from clarion.store.pg import _FIXED, _FIXED_SETTINGS, _GROWN, FEW_PAGES, asyncpg_dsn

# The plan nodes that read a table or an index (CTEs and the unnested parameters are read
# by nodes of their own, not checked).
_PARTITION = re.compile(r"\bdeliveries_p\d{8}\b")
_SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


def _scans(node: dict[str, Any]) -> list[tuple[str, str | None, str | None, bool]]:
    """Every table read of a plan: (node type, table, index, whether the index is read by
    a condition rather than whole)."""
    found = []
    if node["Node Type"] in _SCANS:
        found.append(
            (
                node["Node Type"],
                node.get("Relation Name"),
                node.get("Index Name"),
                "Index Cond" in node,
            )
        )
    for child in node.get("Plans", ()):
        found.extend(_scans(child))
    return found


async def _unique_indexes(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "WHERE i.indisunique"
    )
    return {row[0] for row in rows}


async def _first_day_partition(conn: asyncpg.Connection) -> str:
    return str(
        await conn.fetchval(
            "SELECT min(c.relname) FROM pg_inherits AS i JOIN pg_class AS c "
            "ON c.oid = i.inhrelid WHERE i.inhparent = 'deliveries'::regclass "
            "AND c.relname <> 'deliveries_default'"
        )
    )


def _on(partition: str) -> list[str]:
    """The statements by delivery id naming ``partition`` (store/day_partitions.py)."""
    return [
        bulk._write_changes_on(True, partition),
        bulk._write_changes_on(False, partition),
        bulk._claim_on(partition),
        delivery_store._statuses_on(partition),
    ]


async def _check(url: str, partition: str | None = None, every: bool = False) -> None:
    """The fixed statements (those naming a day partition: naming ``partition``) that a
    pool would plan once on this database now, their tables grown (store/pg.py
    ``FEW_PAGES``); ``every``: all of them are."""
    conn = await asyncpg.connect(asyncpg_dsn(url), server_settings=_FIXED_SETTINGS)
    try:
        statements = [sql for sql in _FIXED if not _PARTITION.search(sql)]
        if partition is not None:
            statements += _on(partition)
        tables = sorted(set().union(*(_FIXED[sql] for sql in statements)))
        grown = {row[0] for row in await conn.fetch(_GROWN, tables, FEW_PAGES)}
        planned_once = [sql for sql in statements if _FIXED[sql] <= grown]
        assert not every or planned_once == statements, set(tables) - grown
        statements = planned_once
        unique = await _unique_indexes(conn)
        assert statements
        wrong = []
        for sql in sorted(statements):
            statement = await conn.prepare(sql)
            nulls = ", ".join(["NULL"] * len(statement.get_parameters()))
            await conn.execute(f"PREPARE fixed AS {sql}")
            try:
                [[plan]] = await conn.fetch(f"EXPLAIN (FORMAT JSON) EXECUTE fixed({nulls})")
            finally:
                await conn.execute("DEALLOCATE fixed")
            scans = _scans(json.loads(plan)[0]["Plan"])
            assert scans, sql
            for kind, table, index, keyed in scans:
                # By a key: one row per value, not the whole table or index, nor a range.
                if kind == "Seq Scan" or (index is not None and (index not in unique or not keyed)):
                    wrong.append((kind, table, index, sql[:60]))
        assert not wrong
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_on_a_new_database(migrated_postgres_url: str) -> None:
    await _check(migrated_postgres_url)


@pytest.mark.postgres
async def test_on_a_database_analysed_while_empty(migrated_postgres_url: str) -> None:
    """Statistics of empty tables: probing `notifications` or a day partition by id, a plan
    made now could read another index whole (each ends with the id). Those statements wait
    for their tables to grow; the others are planned once already."""
    conn = await asyncpg.connect(asyncpg_dsn(migrated_postgres_url))
    try:
        await conn.execute("ANALYZE")
        day = await _first_day_partition(conn)
    finally:
        await conn.close()
    await _check(migrated_postgres_url, day)


@pytest.mark.postgres
async def test_on_tables_that_hold_rows(migrated_postgres_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(migrated_postgres_url))
    try:
        await conn.execute(
            "INSERT INTO tenants (id, name, webhook_secret, settings, created_at) "
            "SELECT 'ten_' || i, 'tenant ' || i, 's', '{}', now() FROM generate_series(1, 20) i"
        )
        await conn.execute(
            "INSERT INTO recipients (tenant_id, id, created_at, updated_at) "
            "SELECT 'ten_' || (i % 20 + 1), 'r' || i, now(), now() "
            "FROM generate_series(1, 20000) i"
        )
        await conn.execute(
            "INSERT INTO templates (tenant_id, name, active_version, latest_version, "
            "updated_at) SELECT 'ten_' || (i % 20 + 1), 't' || i, 1, 1, now() "
            "FROM generate_series(1, 2000) i"
        )
        await conn.execute(
            "INSERT INTO notifications (id, tenant_id, template, recipient_ids, data, "
            "priority, status, created_at) SELECT 'ntf_' || i, 'ten_' || (i % 20 + 1), 't1', "
            "'[]', '{}', 'normal', 'accepted', now() FROM generate_series(1, 20000) i"
        )
        await conn.execute(
            "INSERT INTO outbox (notification_id, tenant_id, available_at) "
            "SELECT id, tenant_id, now() FROM notifications"
        )
        day = await _fill_deliveries(conn, 20_000)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    await _check(migrated_postgres_url, day, every=True)


async def _fill_deliveries(conn: asyncpg.Connection, rows: int, first: int = 1) -> str:
    """``rows`` deliveries in the first day partition (numbered from ``first``), most of
    them sent, and a claim of each; the partition's name."""
    day = await _first_day_partition(conn)
    low = await conn.fetchval(
        "SELECT substring(pg_get_expr(relpartbound, oid) from $$FROM \\('([^']+)'$$) "
        "FROM pg_class WHERE relname = $1",
        day,
    )
    await conn.execute(
        f"INSERT INTO {day} (id, notification_id, tenant_id, recipient_id, channel, "
        "priority, status, attempts, critical, created_at, updated_at) "
        "SELECT $1::text || lpad(i::text, 16, '0'), 'ntf_' || i, 'ten_' || (i % 20 + 1), "
        "'r' || i, 'webhook', 'normal', CASE WHEN i % 10 = 0 THEN 'queued' ELSE 'sent' END, "
        "1, false, now(), now() FROM generate_series($3::int, $3::int + $2::int - 1) i",
        low,
        rows,
        first,
    )
    await conn.execute(
        f"INSERT INTO delivery_claims (id, attempt, leased_until) SELECT id, 1, now() FROM {day} "
        "ON CONFLICT DO NOTHING"
    )
    return day


async def _grown(url: str, analysed_empty: bool) -> str:
    """`notifications`, `recipients` and the first day partition filled to just past the
    size at which their statements are planned once, their statistics those of new tables
    (none) or of tables analysed while empty; the partition's name."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if analysed_empty:
            await conn.execute("ANALYZE")
        rows, day = 0, ""
        while rows < 100_000:
            await conn.execute(
                "INSERT INTO notifications (id, tenant_id, template, recipient_ids, data, "
                "priority, status, created_at) SELECT 'ntf_' || i, 'ten_1', 't1', '[]', "
                "'{}', 'normal', 'accepted', now() "
                "FROM generate_series($1::int, $1::int + 99) i",
                rows + 1,
            )
            await conn.execute(
                "INSERT INTO recipients (tenant_id, id, created_at, updated_at) "
                "SELECT 'ten_1', 'r' || i, now(), now() "
                "FROM generate_series($1::int, $1::int + 99) i",
                rows + 1,
            )
            day = await _fill_deliveries(conn, 100, rows + 1)
            rows += 100
            grown = await conn.fetch(_GROWN, [day, "notifications", "recipients"], FEW_PAGES)
            if len(grown) == 3:
                return day
        raise AssertionError("the tables did not grow")
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("analysed_empty", [False, True], ids=["new", "analysed-empty"])
async def test_on_a_partition_just_grown(migrated_postgres_url: str, analysed_empty: bool) -> None:
    """The plans made at the first moment a partition is named: whether its statistics are
    none, or those of an empty table (a whole-database ANALYZE before its day began)."""
    day = await _grown(migrated_postgres_url, analysed_empty)
    await _check(migrated_postgres_url, day, every=True)
