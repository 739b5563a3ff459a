"""Retention: day partitions on PostgreSQL, batched pruning, `clarion archive`, and the
migration that partitions a database holding data."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.cli import main as cli_main
from clarion.domain.ids import _b32, delivery_id, time_prefix
from clarion.pipeline.context import Context, open_context
from clarion.store import retention
from clarion.store.db import _alembic_config, migrate
from clarion.store.tables import deliveries, delivery_claims, delivery_events, notifications, outbox
from harness import make_settings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
async def ctx(backend: tuple[str, str]) -> AsyncIterator[Context]:
    context = await open_context(make_settings(*backend))
    try:
        await migrate(context.engine)
        yield context
    finally:
        await context.aclose()


def _ntf_id(at: datetime, n: int) -> str:
    millis = int(at.timestamp() * 1000)
    return f"ntf_{time_prefix(millis)}{_b32(n, 16)}"


# A planned notification is stored as accepted, with its outbox row gone.
def _notification(nid: str, at: datetime, status: str = "accepted") -> dict[str, Any]:
    return {
        "id": nid,
        "tenant_id": "ten_r",
        "template": "t",
        "recipient_ids": ["u-1"],
        "data": {},
        "priority": "normal",
        "status": status,
        "created_at": at,
    }


def _delivery(did: str, nid: str, at: datetime) -> dict[str, Any]:
    return {
        "id": did,
        "notification_id": nid,
        "tenant_id": "ten_r",
        "recipient_id": "u-1",
        "channel": "webhook",
        "priority": "normal",
        "status": "sent",
        "attempts": 1,
        "critical": False,
        "created_at": at,
        "updated_at": at,
    }


async def _seed(engine: AsyncEngine, label: str, at: datetime, status: str = "accepted") -> str:
    """A notification accepted at ``at`` with one delivery, its event and its claim; the
    delivery id."""
    nid = _ntf_id(at, hash(label) & 0xFFFF)
    did = delivery_id(nid, "u-1", "webhook")
    async with engine.begin() as conn:
        await conn.execute(insert(notifications), [_notification(nid, at, status)])
        await conn.execute(insert(deliveries), [_delivery(did, nid, at)])
        await conn.execute(
            insert(delivery_events),
            [{"delivery_id": did, "tenant_id": "ten_r", "status": "sent", "created_at": at}],
        )
        # Its attempt's claim, whose lease ended when it was sent.
        await conn.execute(insert(delivery_claims), [{"id": did, "attempt": 1, "leased_until": at}])
    return did


async def _count(engine: AsyncEngine, table: Any, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _partitions(engine: AsyncEngine) -> dict[str, list[str]]:
    async with engine.connect() as conn:

        def read(c: Connection) -> dict[str, list[str]]:
            return {t: sorted(retention.partition_days(c, t).values()) for t in ("deliveries",)}

        return await conn.run_sync(read)


async def test_rows_older_than_the_horizon_go_and_younger_ones_stay(ctx: Context) -> None:
    engine = ctx.engine
    pg = engine.dialect.name == "postgresql"
    old_day = NOW - timedelta(days=40)
    if pg:
        # The day partitions the scheduler made back then.
        async with engine.begin() as conn:
            await conn.run_sync(
                retention.ensure_partitions, old_day.date(), (NOW - timedelta(days=1)).date()
            )
    old = await _seed(engine, "old", old_day)
    edge = await _seed(engine, "edge", NOW - timedelta(days=29, hours=23))
    young = await _seed(engine, "young", NOW - timedelta(hours=1))
    # Accepted long ago but still waiting (send_at far ahead): it stays.
    waiting_nid = _ntf_id(old_day, 7)
    async with engine.begin() as conn:
        await conn.execute(insert(notifications), [_notification(waiting_nid, old_day, "accepted")])
        await conn.execute(
            insert(outbox),
            [{"notification_id": waiting_nid, "tenant_id": "ten_r", "available_at": NOW}],
        )
        # A row without a time in its id (written before partitioning): pruned by its age.
        await conn.execute(insert(deliveries), [_delivery("dlv_legacy_old", "ntf_x", old_day)])
        await conn.execute(insert(deliveries), [_delivery("dlv_legacy_new", "ntf_y", NOW)])

    report = await retention.maintain(engine, NOW, days=30)

    for did in (old, "dlv_legacy_old"):
        assert await _count(engine, deliveries, id=did) == 0, did
    assert await _count(engine, delivery_events, delivery_id=old) == 0
    assert await _count(engine, delivery_claims, id=old) == 0
    for did in (edge, young):
        assert await _count(engine, delivery_claims, id=did) == 1, did
    for did in (edge, young, "dlv_legacy_new"):
        assert await _count(engine, deliveries, id=did) == 1, did
        if did.startswith("dlv_0"):
            assert await _count(engine, delivery_events, delivery_id=did) == 1
    assert await _count(engine, notifications, id=waiting_nid) == 1
    assert await _count(engine, notifications) == 3  # edge, young, waiting
    if pg:
        assert retention.partition_name("deliveries", old_day.date()) in report.dropped
        names = (await _partitions(engine))["deliveries"]
        assert retention.partition_name("deliveries", old_day.date()) not in names
        for ahead in range(retention.AHEAD_DAYS + 1):
            day = (NOW + timedelta(days=ahead)).date()
            assert retention.partition_name("deliveries", day) in names
        # The young delivery sits in its day's partition, not the default one.
        async with engine.connect() as conn:
            where = (
                await conn.execute(
                    text("SELECT tableoid::regclass::text FROM deliveries WHERE id = :id"),
                    {"id": young},
                )
            ).scalar_one()
        assert where == retention.partition_name("deliveries", young_day(NOW))
    # Nothing to do a second time.
    again = await retention.maintain(engine, NOW, days=30)
    assert again.work == 0


def young_day(now: datetime) -> Any:
    return (now - timedelta(hours=1)).date()


async def test_zero_days_keeps_everything(ctx: Context) -> None:
    old = await _seed(ctx.engine, "old", NOW - timedelta(days=400))
    await retention.maintain(ctx.engine, NOW, days=0)
    assert await _count(ctx.engine, deliveries, id=old) == 1


async def test_archive_exports_then_removes(ctx: Context, tmp_path: Path) -> None:
    engine = ctx.engine
    real_now = datetime.now(UTC)
    old_day = real_now - timedelta(days=20)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.run_sync(retention.ensure_partitions, old_day.date(), real_now.date())
    old = await _seed(engine, "old", old_day)
    young = await _seed(engine, "young", real_now - timedelta(days=2))

    settings_env = {
        "CLARION_DATABASE_URL": ctx.settings.database_url,
        "CLARION_BROKER_URL": ctx.settings.broker_url,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings_env.items():
            mp.setenv(name, value)
        assert await asyncio.to_thread(cli_main, ["archive", "--before", "14d", "--dry-run"]) == 0
        assert await _count(engine, deliveries, id=old) == 1
        assert (
            await asyncio.to_thread(
                cli_main, ["archive", "--before", "soon", "--to", str(tmp_path)]
            )
            == 2
        )
        assert await asyncio.to_thread(cli_main, ["archive", "--before", "14d"]) == 2
        assert (
            await asyncio.to_thread(
                cli_main, ["archive", "--before", "14d", "--to", str(tmp_path / "out")]
            )
            == 0
        )

    assert await _count(engine, deliveries, id=old) == 0
    assert await _count(engine, deliveries, id=young) == 1
    exported: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((tmp_path / "out").iterdir()):
        assert path.name.endswith(".jsonl.gz"), path.name
        with gzip.open(path, "rt") as lines:
            exported[path.name] = [json.loads(line) for line in lines]
    rows = [row for name, found in exported.items() for row in found]
    assert [r["id"] for r in rows if r.get("id") == old] == [old]
    assert any(r.get("delivery_id") == old for r in rows)
    assert not any(young in (r.get("id"), r.get("delivery_id")) for r in rows)
    assert any(str(r.get("id")).startswith("ntf_") for r in rows)


@pytest.mark.parametrize("unmigrated_backend", ["postgres+redis"], indirect=True)
async def test_the_partition_migration_keeps_a_database_holding_data(
    unmigrated_backend: tuple[str, str],
) -> None:
    context = await open_context(make_settings(*unmigrated_backend))
    engine = context.engine
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0015"))
        old_at = datetime.now(UTC) - timedelta(days=45)
        legacy = [f"dlv_{_b32(n * 7919, 25)}" for n in range(300)]
        async with engine.begin() as conn:
            await conn.execute(
                insert(deliveries),
                [
                    _delivery(did, "ntf_legacy", old_at + timedelta(minutes=i))
                    for i, did in enumerate(legacy)
                ],
            )
            await conn.execute(
                text(
                    "INSERT INTO delivery_events (delivery_id, tenant_id, status, created_at) "
                    "SELECT id, tenant_id, 'sent', created_at FROM deliveries"
                )
            )
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(retention.is_partitioned)
        assert await _count(engine, deliveries) == 300
        assert await _count(engine, delivery_events) == 300
        async with engine.connect() as conn:
            last = await conn.execute(select(deliveries).where(deliveries.c.id == legacy[-1]))
            assert last.mappings().one()["created_at"] == old_at + timedelta(minutes=299)
        # New rows go to their day; events keep numbering after the old ones.
        young = await _seed(engine, "new", datetime.now(UTC))
        async with engine.connect() as conn:
            ids = (await conn.execute(select(delivery_events.c.id))).scalars().all()
        assert len(set(ids)) == 301
        # The rows from before are pruned by age.
        await retention.maintain(engine, datetime.now(UTC), days=30)
        assert await _count(engine, deliveries) == 1
        assert await _count(engine, deliveries, id=young) == 1
        # And it goes back down.
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0015"))
        async with engine.connect() as conn:
            assert not await conn.run_sync(retention.is_partitioned)
        assert await _count(engine, deliveries, id=young) == 1
    finally:
        await context.aclose()


def test_a_delivery_id_carries_its_notification_time() -> None:
    from clarion.domain.digests import digest_notification_id
    from clarion.domain.ids import NO_TIME, new_id, renamed_delivery_id, time_part

    nid = new_id("ntf")
    did = delivery_id(nid, "u-1", "email")
    assert did == delivery_id(nid, "u-1", "email")  # a replayed plan finds it
    assert did != delivery_id(nid, "u-1", "sms") != delivery_id(nid, "u-2", "email")
    assert len(did) == 30
    assert time_part(did) == time_part(nid) != NO_TIME
    day = datetime.now(UTC).date()
    assert retention.day_bound(day) <= did < retention.day_bound(day + timedelta(days=1))
    # A digest's notification carries its window's time; an erased delivery keeps its day.
    window = new_id("dgw")
    assert time_part(digest_notification_id(window)) == time_part(window)
    renamed = renamed_delivery_id(did)
    assert renamed != did
    assert time_part(renamed) == time_part(did)
    # Ids that carry no time sort after every day.
    assert time_part("ntf_legacy") == NO_TIME
    assert delivery_id("ntf_legacy", "u-1", "email") > retention.day_bound(date_max())


def date_max() -> Any:
    return datetime(2200, 1, 1, tzinfo=UTC).date()
