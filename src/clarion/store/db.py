"""Engine creation, connection tuning and migrations."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

# The database's handle. Code above the store holds one and hands it to store functions;
# it takes the name from here, so that only the store imports SQLAlchemy.
from sqlalchemy.ext.asyncio import AsyncEngine as AsyncEngine

from clarion.config import Settings
from clarion.store import sqlite_driver
from clarion.store.pg import PgPool

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 7_340_121  # PostgreSQL advisory lock id held while migrating


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything Clarion stores is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_file(database_url: str) -> Path | None:
    """The file of an SQLite database; None for another database, or one in memory."""
    if not database_url.startswith("sqlite"):
        return None
    database = make_url(database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def shown(row: Mapping[Any, Any], columns: Iterable[str]) -> dict[str, Any]:
    """Those columns of a row, in that order, as the API shows them: times in UTC."""
    return {c: as_utc(v) if isinstance(v := row[c], datetime) else v for c in columns}


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


_SQLITE_MMAP = 256 * 1024 * 1024
_SQLITE_CACHE_KIB = 32 * 1024


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            # aiosqlite with one trip to its thread per statement (store/sqlite_driver.py).
            module=sqlite_driver.dbapi(),
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
            pool_size=4,
            max_overflow=4,
            # An error's message leaves out its statement's parameters (bodies, addresses):
            # it is logged.
            hide_parameters=not settings.log_pii,
        )
        synchronous = settings.sqlite_synchronous.upper()

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA secure_delete=ON")
            # Pages read through a memory map rather than a read() each, and a page cache of
            # 32 MiB per connection instead of 2: the hot tables' indexes stay in memory.
            cursor.execute(f"PRAGMA mmap_size={_SQLITE_MMAP}")
            cursor.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        # An error's message leaves out its statement's parameters (bodies, addresses): it
        # is logged.
        hide_parameters=not settings.log_pii,
        connect_args={
            "command_timeout": 30,
            # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
            # generic plan, which for the hot paths' `IN (...)` lists of ids is much slower
            # than planning with the actual values (measured in docs/performance.md).
            "server_settings": {"plan_cache_mode": "force_custom_plan"},
        },
    )


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the database: raises when it does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def pools(engine: AsyncEngine, pg: PgPool | None) -> list[tuple[str, int, int]]:
    """This process's database connections, ``(pool, in use, idle)`` for each pool that
    counts them: SQLAlchemy's, and on PostgreSQL the hot statements' (asyncpg)."""
    found = []
    pool: Any = engine.pool
    if hasattr(pool, "checkedout"):
        found.append(("sqlalchemy", pool.checkedout(), pool.checkedin()))
    use = pg.in_use() if pg is not None else None
    if use is not None:
        found.append(("asyncpg", *use))
    return found


def _scripts_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _alembic_config(connection: Connection) -> Config:
    config = _scripts_config()
    config.attributes["connection"] = connection
    return config


@functools.cache
def _heads() -> frozenset[str]:
    """The newest migrations (one: the history is a line), read from the scripts once a
    process."""
    return frozenset(ScriptDirectory.from_config(_scripts_config()).get_heads())


def _at_heads(connection: Connection) -> bool:
    """Whether the schema is at the newest migrations already: one read of alembic's own
    table, where an upgrade to them would load every migration script to find that out."""
    if not inspect(connection).has_table("alembic_version"):
        return False
    stored = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return frozenset(stored) == _heads()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    if _at_heads(connection):
        return
    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def writes_at_once(engine: AsyncEngine) -> int:
    """How many batches of one kind (claims, status changes) a process writes at once: two
    on PostgreSQL, where one is stored while the next gathers; one on SQLite, whose writers
    take turns (:func:`write_tx`): a second would only wait for the first's turn, and each
    would carry half the batch (docs/performance.md, "Embedded: one trip per statement")."""
    return 1 if engine.dialect.name == "sqlite" else 2


_WRITE_LOCKS: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def write_tx(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction. On SQLite, writers of this process take turns: SQLite allows
    one writer at a time, and two transactions that both read before writing could
    otherwise deadlock on the upgrade to a write lock."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine] = asyncio.Lock()
    async with lock, engine.begin() as conn:
        yield conn
