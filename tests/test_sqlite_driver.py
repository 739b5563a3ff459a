"""SQLite's driver (store/sqlite_driver.py): one trip to the connection's thread per
statement, and everything SQLAlchemy reads of a statement as aiosqlite's cursor gives it:
rows, ``rowcount``, ``lastrowid``, errors, transactions, streamed results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.config import Settings
from clarion.store.db import create_engine, write_tx


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls made in the connections' threads, by name, from now on."""
    made: list[str] = []
    trip = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(getattr(fn, "__name__", repr(fn)))
        return await trip(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return made


async def _names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars())


async def test_a_read_is_one_trip_and_a_write_two(engine: AsyncEngine, trips: list[str]) -> None:
    await _names(engine)  # a pooled connection, so that opening one is not counted
    trips.clear()
    assert await _names(engine) == []
    # The statement; no rollback when the pool takes the connection back (none open).
    assert trips == ["_run"]
    trips.clear()
    async with write_tx(engine) as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
    assert trips == ["_run", "commit"]


async def test_rows_counts_and_ids_are_those_of_the_statement(engine: AsyncEngine) -> None:
    async with write_tx(engine) as conn:
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert inserted.lastrowid == 1
        many = await conn.execute(
            text("INSERT INTO t (name) VALUES (:name)"), [{"name": n} for n in "bcd"]
        )
        assert many.rowcount == 3
        returned = await conn.execute(
            text("UPDATE t SET name = name || '!' WHERE id > 2 RETURNING id")
        )
        assert sorted(returned.scalars()) == [3, 4]
        updated = await conn.execute(text("UPDATE t SET name = name || '?' WHERE id <= 2"))
        assert updated.rowcount == 2
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT id, name FROM t ORDER BY id"))
        assert list(result.keys()) == ["id", "name"]
        assert result.fetchone() == (1, "a?")
        assert result.fetchmany(2) == [(2, "b?"), (3, "c!")]
        assert result.fetchall() == [(4, "d!")]
        empty = await conn.execute(text("SELECT id FROM t WHERE id < 0"))
        assert empty.all() == []


async def _insert_twice(engine: AsyncEngine) -> None:
    async with write_tx(engine) as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))


async def _read_nowhere(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT nothing FROM nowhere"))


async def test_a_failed_transaction_leaves_nothing(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        await _insert_twice(engine)
    assert await _names(engine) == []
    with pytest.raises(OperationalError):
        await _read_nowhere(engine)
    # The connections are whole after the errors.
    async with write_tx(engine) as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
    assert await _names(engine) == ["a"]


async def test_an_uncommitted_write_is_rolled_back(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert conn.in_transaction()
    # Closed without a commit: the pool's rollback ended it.
    assert await _names(engine) == []


async def test_a_streamed_result_is_read_as_it_comes(engine: AsyncEngine) -> None:
    async with write_tx(engine) as conn:
        await conn.execute(
            text("INSERT INTO t (name) VALUES (:name)"), [{"name": f"n{i}"} for i in range(250)]
        )
    async with engine.connect() as conn:
        result = await conn.stream(text("SELECT name FROM t ORDER BY id"))
        names = [row[0] async for row in result]
    assert names == [f"n{i}" for i in range(250)]


@pytest.mark.parametrize("count", [1, 3, 512, 1300])
async def test_many_rows_are_inserted_as_executemany_would(
    engine: AsyncEngine, trips: list[str], count: int
) -> None:
    rows = [{"name": f"n{i}"} for i in range(count)]
    ignoring = text("INSERT INTO t (name) VALUES (:name) ON CONFLICT DO NOTHING")
    async with write_tx(engine) as conn:
        assert (await conn.execute(ignoring, rows)).rowcount == count
        # Again, with one new row among them: only it is stored.
        again = await conn.execute(ignoring, [*rows, {"name": "new"}])
        assert again.rowcount == 1
    assert await _names(engine) == [f"n{i}" for i in range(count)] + ["new"]
    assert trips.count("_run_many") == (2 if count > 1 else 1)  # one row: `execute`


async def test_an_upsert_of_many_rows_and_an_update_of_many(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE k (id TEXT PRIMARY KEY, n INTEGER)"))
    upsert = text(
        "INSERT INTO k (id, n) VALUES (:id, :n) ON CONFLICT (id) DO UPDATE SET n = excluded.n"
    )
    async with write_tx(engine) as conn:
        await conn.execute(upsert, [{"id": f"k{i}", "n": i} for i in range(5)])
        # A row twice in one batch: the later one wins, as one row after the other would.
        await conn.execute(
            upsert, [{"id": "k1", "n": 10}, {"id": "k9", "n": 9}, {"id": "k1", "n": 11}]
        )
        updated = await conn.execute(
            text("UPDATE k SET n = n + :by WHERE id = :id"),
            [{"id": "k0", "by": 100}, {"id": "k2", "by": 200}, {"id": "none", "by": 1}],
        )
        assert updated.rowcount == 2
    async with engine.connect() as conn:
        stored = {row[0]: row[1] for row in await conn.execute(text("SELECT id, n FROM k"))}
    assert stored == {"k0": 100, "k1": 11, "k2": 202, "k3": 3, "k4": 4, "k9": 9}


async def test_a_failing_row_fails_the_whole_batch(engine: AsyncEngine) -> None:
    rows = [{"name": "a"}, {"name": "b"}, {"name": "a"}]
    with pytest.raises(IntegrityError):
        await _insert_rows(engine, rows)
    assert await _names(engine) == []


async def _insert_rows(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with write_tx(engine) as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), rows)
