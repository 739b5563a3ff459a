"""The statements by delivery id name the day partition that holds the ids
(store/day_partitions.py), and only one PostgreSQL itself put them in: for a batch of one
day with a partition of its own; never for ids of another shape, of two days, of a day
whose rows are in the default partition, or of a partition dropped or detached since; nor
and a statement naming a small partition is planned with its values until it has grown
(store/pg.py ``FEW_PAGES``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from clarion.domain.ids import _b32, delivery_id, time_prefix
from clarion.store import bulk, day_partitions, retention
from clarion.store import deliveries as delivery_store
from clarion.store.day_partitions import RECHECK, DayPartitions, day_of
from clarion.store.pg import FEW_PAGES, PgPool, asyncpg_dsn
from databases import _database, _migrate
from harness import StillClock
from servers import admin

pytestmark = pytest.mark.postgres


def _ntf_at(millis: int, n: int = 1) -> str:
    return f"ntf_{time_prefix(millis)}{_b32(n, 16)}"


def _dlv_at(millis: int, n: int = 1) -> str:
    return delivery_id(_ntf_at(millis, n), f"u-{n}", "webhook")


def _start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
async def pg(migrated_postgres_url: str) -> AsyncIterator[PgPool]:
    pool = PgPool(migrated_postgres_url)
    try:
        yield pool
    finally:
        await pool.aclose()


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _insert_delivery(url: str, did: str, status: str = "queued") -> str:
    """Insert a delivery through the partitioned table; the table PostgreSQL put it in."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return str(
            await conn.fetchval(
                "INSERT INTO deliveries (id, notification_id, tenant_id, recipient_id, "
                "channel, priority, status, attempts, critical, created_at, updated_at) "
                "VALUES ($1, 'ntf_x', 'ten_d', 'u-1', 'webhook', 'normal', $2, 0, false, "
                "now(), now()) RETURNING tableoid::regclass::text",
                did,
                status,
            )
        )
    finally:
        await conn.close()


async def _partition_days(url: str) -> list[date]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'deliveries'::regclass AND c.relname <> 'deliveries_default'"
        )
    finally:
        await conn.close()
    return sorted(datetime.strptime(r[0][-8:], "%Y%m%d").date() for r in names)


async def test_a_batch_of_one_day_names_its_partition(pg: PgPool) -> None:
    day = datetime.now(UTC).date()
    ids = [_dlv_at(_start(day) + 3_600_000 * n, n) for n in range(1, 20)]
    assert await pg.days.of(ids) == retention.partition_name("deliveries", day)
    # Another day's id, an id of another shape, none: the partitioned table.
    other = _dlv_at(_start(day) + 86_400_000 + 5, 99)
    assert await pg.days.of([*ids, other]) is None
    assert await pg.days.of([*ids, "dlv_legacy-42"]) is None
    assert await pg.days.of([*ids, ids[0].upper()]) is None
    assert await pg.days.of([]) is None
    assert day_of("dlv_legacy-42") is None


async def test_a_day_without_a_partition_of_its_own(pg: PgPool, migrated_postgres_url: str) -> None:
    far = datetime.now(UTC).date() + timedelta(days=400)
    did = _dlv_at(_start(far) + 1)
    assert await _insert_delivery(migrated_postgres_url, did) == "deliveries_default"
    assert await pg.days.of([did]) is None
    # The statements find it in the default partition all the same.
    assert await delivery_store.spent_ids(None, [(did, 1)], pg) == set()
    assert await bulk.claim(pg, [(did, 1)], 30.0) == {did}


async def test_the_routing_agrees_with_postgresql(pg: PgPool, migrated_postgres_url: str) -> None:
    """Ids at the edges of each day partition there is: the partition named for each is
    the one PostgreSQL put it in."""
    days = await _partition_days(migrated_postgres_url)
    assert days
    for n, day in enumerate(days):
        first, last = _start(day), _start(day + timedelta(days=1)) - 1
        for k, millis in enumerate((first, first + 1, last - 1, last)):
            did = _dlv_at(millis, 100 * n + k)
            put = await _insert_delivery(migrated_postgres_url, did)
            named = await pg.days.of([did])
            assert named == put, (did, named, put)
    # Just before the first day and just after the last: not in a day partition.
    for millis in (_start(days[0]) - 1, _start(days[-1] + timedelta(days=1))):
        did = _dlv_at(millis, 7)
        put = await _insert_delivery(migrated_postgres_url, did)
        assert put == "deliveries_default"
        assert await pg.days.of([did]) is None


async def test_statements_on_a_partition(pg: PgPool, migrated_postgres_url: str) -> None:
    """The status writer's update, the claim and the screen, each on a day partition, do
    what they do on the partitioned table."""
    day = datetime.now(UTC).date()
    ids = [_dlv_at(_start(day) + 1000 * n, n) for n in range(1, 4)]
    for did in ids:
        await _insert_delivery(migrated_postgres_url, did)
    assert await pg.days.of(ids) is not None
    assert await bulk.claim(pg, [(did, 1) for did in ids], 30.0) == set(ids)
    assert await bulk.claim(pg, [(did, 1) for did in ids], 30.0) == set()  # held
    at = datetime.now(UTC)
    await bulk.write_changes(
        pg,
        [(ids[0], "sent", 1, None, None, "pm-1", None, at, "webhook", 12)],
        [(ids[0], "ten_d", "sent", None, 1, "webhook", 12, None, None)],
        at,
    )
    spent = await delivery_store.spent_ids(None, [(did, 1) for did in ids], pg)
    assert spent == {ids[0]}
    conn = await asyncpg.connect(asyncpg_dsn(migrated_postgres_url))
    try:
        row = await conn.fetchrow(
            "SELECT status, attempts, provider_message_id FROM deliveries WHERE id = $1", ids[0]
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM delivery_events WHERE delivery_id = $1", ids[0]
        )
    finally:
        await conn.close()
    assert tuple(row) == ("sent", 1, "pm-1")
    assert events == 1


async def test_a_partition_dropped_since(pg: PgPool, migrated_postgres_url: str) -> None:
    """A partition dropped after it was named (retention): the statements fall back to the
    partitioned table, and the partition is looked up again before it is named again."""
    days = await _partition_days(migrated_postgres_url)
    last = days[-1]
    did = _dlv_at(_start(last) + 5)
    name = retention.partition_name("deliveries", last)
    assert await _insert_delivery(migrated_postgres_url, did) == name
    assert await pg.days.of([did]) == name
    # Each statement prepared on the partition, then the partition dropped.
    assert await delivery_store.spent_ids(None, [(did, 1)], pg) == set()
    await _sql(migrated_postgres_url, f"DROP TABLE {name}")
    assert await delivery_store.spent_ids(None, [(did, 1)], pg) == set()
    assert await bulk.claim(pg, [(did, 1)], 30.0) == set()
    at = datetime.now(UTC)
    await bulk.write_changes(
        pg, [(did, "sent", 1, None, None, None, None, at, "webhook", 1)], [], at
    )
    assert await pg.days.of([did]) is None


async def test_a_partition_detached_is_named_no_more(migrated_postgres_url: str) -> None:
    """What the catalog showed is looked at again every RECHECK seconds: a partition
    detached by hand is a plain table, where no new row goes."""
    clock = StillClock()
    pool = PgPool(migrated_postgres_url)
    pool.days = DayPartitions(pool, clock)
    try:
        days = await _partition_days(migrated_postgres_url)
        did = _dlv_at(_start(days[-1]) + 5)
        name = retention.partition_name("deliveries", days[-1])
        assert await pool.days.of([did]) == name
        await _sql(migrated_postgres_url, f"ALTER TABLE deliveries DETACH PARTITION {name}")
        assert await pool.days.of([did]) == name  # not looked at again yet
        clock.now += RECHECK + 1
        assert await pool.days.of([did]) is None
    finally:
        await pool.aclose()


async def test_a_partition_of_other_bounds_is_not_named(
    pg: PgPool, migrated_postgres_url: str
) -> None:
    """A partition with a day's name but not its bounds (made by hand) is not that day's."""
    day = datetime.now(UTC).date() + timedelta(days=30)
    name = retention.partition_name("deliveries", day)
    low = retention.day_bound(day)
    high = "dlv_" + time_prefix(_start(day) + 12 * 3_600_000)
    await _sql(
        migrated_postgres_url,
        f"CREATE TABLE {name} PARTITION OF deliveries FOR VALUES FROM ('{low}') TO ('{high}')",
    )
    assert await pg.days.of([_dlv_at(_start(day) + 5)]) is None


async def test_concurrent_batches_ask_the_catalog_once(pg: PgPool) -> None:
    import asyncio

    asked = 0
    fetch = pg.fetch

    async def counting(sql: str, *args: object) -> list[asyncpg.Record]:
        nonlocal asked
        if sql == day_partitions._BOUNDS:
            asked += 1
        return await fetch(sql, *args)

    pg.fetch = counting  # type: ignore[method-assign]
    day = datetime.now(UTC).date()
    ids = [_dlv_at(_start(day) + n, n) for n in range(1, 4)]
    found = await asyncio.gather(*(pg.days.of(ids) for _ in range(10)))
    assert set(found) == {retention.partition_name("deliveries", day)}
    assert asked == 1


async def _fill(url: str, table: str, low: str, rows: int) -> int:
    """``rows`` deliveries in ``table`` (ids from ``low`` on); its pages."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            f"INSERT INTO {table} (id, notification_id, tenant_id, recipient_id, channel, "
            "priority, status, attempts, critical, created_at, updated_at) "
            "SELECT $1::text || lpad(i::text, 16, '0'), 'ntf_' || i, 'ten_d', 'r' || i, "
            "'webhook', 'normal', 'sent', 1, false, now(), now() "
            "FROM generate_series(1, $2::int) i",
            low,
            rows,
        )
        return int(await conn.fetchval(f"SELECT pg_relation_size('{table}') / 8192"))
    finally:
        await conn.close()


async def test_planned_once_after_the_partition_has_grown(
    pg: PgPool, migrated_postgres_url: str
) -> None:
    """On a partition analysed while empty a plan made once could read another index
    whole: its statements run with their values until it has FEW_PAGES pages."""
    day = datetime.now(UTC).date()
    name = retention.partition_name("deliveries", day)
    await _sql(migrated_postgres_url, f"ANALYZE {name}")
    sql = delivery_store._statuses_on(name)
    assert await pg.days.of([_dlv_at(_start(day) + 5)]) == name
    assert not await pg.fixed(sql)
    pages = await _fill(migrated_postgres_url, name, retention.day_bound(day), 2_000)
    assert pages >= FEW_PAGES
    assert not await pg.fixed(sql)  # not looked at again yet
    pg._look_at = 0.0
    assert await pg.fixed(sql)
    assert await delivery_store.spent_ids(None, [(_dlv_at(_start(day) + 5), 1)], pg) == set()


async def test_no_partition_is_named_under_a_collation_that_orders_numbers(
    pg_server: str,
) -> None:
    """Under an ICU collation comparing digits as numbers ("9" before "10"), ids do not
    order as bytes do: which partition holds an id is PostgreSQL's to say, and none is
    named."""
    name = f"clarion_test_kn_{uuid.uuid4().hex[:12]}"
    try:
        await admin(
            pg_server,
            f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8 LOCALE_PROVIDER icu '
            "ICU_LOCALE 'und-u-kn-true' LOCALE 'C.UTF-8'",
        )
    except asyncpg.PostgresError as exc:
        pytest.skip(f"this PostgreSQL cannot make an ICU database: {exc}")
    try:
        url = _database(pg_server, name)
        await _migrate(url)
        pool = PgPool(url)
        try:
            day = datetime.now(UTC).date()
            did = _dlv_at(_start(day) + 5)
            assert await _insert_delivery(url, did) == retention.partition_name("deliveries", day)
            assert await pool.days.of([did]) is None
            assert await bulk.claim(pool, [(did, 1)], 30.0) == {did}
        finally:
            await pool.aclose()
    finally:
        await admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
