"""SQLite's hot bulk writes (store/sql.py ``execute_many``) store what SQLAlchemy stores,
and the intake's insert without RETURNING still tells which rows it stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.config import Settings
from clarion.domain.ids import new_id
from clarion.store.db import create_engine, write_tx
from clarion.store.intake import intake_tx
from clarion.store.sql import execute_many, insert_ignoring_conflicts
from clarion.store.tables import deliveries, notifications


@pytest.fixture
async def engine(migrated_sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=migrated_sqlite_url))
    try:
        yield engine
    finally:
        await engine.dispose()


def _delivery(i: int, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"dlv_{i}",
        "notification_id": "ntf_1",
        "tenant_id": "t",
        "recipient_id": f"r{i}",
        "channel": "webhook",
        "provider": None,
        "priority": "normal",
        "status": "queued",
        "created_at": at,
        "updated_at": at + timedelta(microseconds=i),
        **extra,
    }


async def _stored(engine: AsyncEngine, table: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))).all())


async def test_rows_are_stored_as_sqlalchemy_stores_them(engine: AsyncEngine) -> None:
    at = datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=UTC)
    rows = [_delivery(i, at) for i in range(3)]
    async with write_tx(engine) as conn:
        stmt = insert_ignoring_conflicts(conn, deliveries)
        assert await execute_many(conn, stmt, rows) == 3
        # The same statement again: nothing new (each row ignored), and the rows' defaults
        # (`attempts`, `critical`) came from the table, as SQLAlchemy fills them in.
        assert await execute_many(conn, stmt, rows) == 0
    by_driver = await _stored(engine, "deliveries")
    async with write_tx(engine) as conn:
        await conn.execute(deliveries.delete())
        await conn.execute(insert_ignoring_conflicts(conn, deliveries), rows)
    assert await _stored(engine, "deliveries") == by_driver
    async with engine.connect() as conn:
        stamp = (await conn.execute(text("SELECT min(created_at) FROM deliveries"))).scalar()
    assert stamp == "2026-03-29 01:30:00.000005"


async def test_an_update_binds_rows_and_fixed_values(engine: AsyncEngine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    async with write_tx(engine) as conn:
        await conn.execute(deliveries.insert(), [_delivery(i, at) for i in range(3)])
    stmt = (
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"), deliveries.c.status != "delivered")
        .values(attempts=bindparam("b_attempts"), updated_at=bindparam("b_at"))
    )
    later = at + timedelta(hours=1)
    rows = [
        {"b_id": "dlv_1", "b_attempts": 2, "b_at": later},
        {"b_id": "dlv_9", "b_attempts": 5, "b_at": later},  # no such row
    ]
    async with write_tx(engine) as conn:
        assert await execute_many(conn, stmt, rows) == 1
    async with engine.connect() as conn:
        found = {
            row.id: (row.attempts, row.updated_at) for row in await conn.execute(select(deliveries))
        }
    assert found["dlv_1"] == (2, later.replace(tzinfo=None))
    assert found["dlv_0"][0] == found["dlv_2"][0] == 0


def _notification(key: str | None, at: datetime) -> dict[str, Any]:
    return {
        "id": new_id("ntf"),
        "tenant_id": "t",
        "template": "hook",
        "recipient_ids": ["r1"],
        "data": {"n": 1, "nested": {"x": [1, None]}},
        "priority": "normal",
        "channels": None,
        "send_at": None,
        "expires_at": None,
        "status": "accepted",
        "idempotency_key": key,
        "request_hash": "h",
        "created_at": at,
        "topic": None,
        "trace": None,
    }


async def test_the_intake_tells_which_rows_it_stored(engine: AsyncEngine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = _notification("k1", at)
    async with intake_tx(engine, None) as tx:
        assert (await tx.insert([first], [at])).ids == {first["id"]}
    # One row meets a taken idempotency key: it alone is left out.
    rows = [_notification("k1", at), _notification("k2", at), _notification(None, at)]
    async with intake_tx(engine, None) as tx:
        assert (await tx.insert(rows, [at] * 3)).ids == {rows[1]["id"], rows[2]["id"]}
    async with engine.connect() as conn:
        stored = (await conn.execute(select(notifications.c.id, notifications.c.data))).all()
        outbox = (await conn.execute(text("SELECT notification_id FROM outbox"))).scalars()
        assert set(outbox) == {first["id"], rows[1]["id"], rows[2]["id"]}
    assert {row.data["nested"]["x"][1] for row in stored} == {None}
    assert len(stored) == 3
