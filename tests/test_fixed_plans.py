"""The statements planned once per connection (store/pg.py ``fixed_plan``) read every table
by an index, whatever the statistics were when their plan was made: on a new database,
and on one whose tables hold rows and have been analyzed. A plan that read a table whole
would be kept for the connection's life, however large the table grew."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from clarion.store import bulk, intake  # noqa: F401  (their statements register themselves)
from clarion.store import deliveries as delivery_store
from clarion.store.pg import _FIXED, _FIXED_SETTINGS, asyncpg_dsn

# The plan nodes that read a table or an index (CTEs and the unnested parameters are read
# by nodes of their own, not checked).
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


async def _check(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url), server_settings=_FIXED_SETTINGS)
    try:
        # The statements by delivery id, on a day partition (store/day_partitions.py).
        day = await _first_day_partition(conn)
        for packed in (True, False):
            bulk._write_changes_on(packed, day)
        bulk._claim_on(day)
        delivery_store._statuses_on(day)
        unique = await _unique_indexes(conn)
        assert _FIXED
        wrong = []
        for sql in sorted(_FIXED):
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
        # Deliveries in a day partition, most of them sent, and claims of theirs.
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
            "1, false, now(), now() FROM generate_series(1, 20000) i",
            low,
        )
        await conn.execute(
            f"INSERT INTO delivery_claims (id, attempt, leased_until) "
            f"SELECT id, 1, now() FROM {day}"
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    await _check(migrated_postgres_url)
