"""Direct asyncpg access for the hot statements on PostgreSQL.

The delivery path runs a handful of statements per batch, thousands of times a minute:
the planner's reads and its insert, the status writer's update, the intake's insert. Through
SQLAlchemy each costs a pool checkout with a ``pre_ping`` round trip, a ``BEGIN`` and a
``ROLLBACK`` or ``COMMIT`` round trip, and a compilation of the statement's parameters
(``IN`` lists expand to a new SQL text, and so a new prepared statement, for every size).
Here each is one fixed SQL text with array parameters (``= ANY($1)``, ``unnest``), prepared
once per connection by asyncpg, and a write that touches several tables is one statement
(data-modifying ``WITH``), so atomic without a transaction block and one round trip.

Everything else goes through SQLAlchemy (on SQLite, the hot bulk writes through
store/sql.py ``execute_many``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url


def asyncpg_dsn(database_url: str) -> str:
    """The asyncpg form of a ``postgresql+asyncpg://`` SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def _init(conn: asyncpg.Connection) -> None:
    # JSON columns read back as Python values, as SQLAlchemy's JSON type reads them.
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Connections hold no session state of their own (no LISTEN, no advisory locks, no
    SET): the pool's reset round trip on every release is skipped."""


# How long a statement waits for one of the pool's connections. asyncpg waits forever by
# default: one connection never given back would stop every later statement, silently.
# Bounded, the wait fails (TimeoutError, an outage to the callers), and the unit of work
# that needed the connection is retried like any other that met an unreachable database.
ACQUIRE_TIMEOUT = 30.0


class PgPool:
    """A small asyncpg pool, opened on first use."""

    def __init__(self, database_url: str, *, size: int = 4) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._size,
                    init=_init,
                    reset=_no_reset,
                    command_timeout=30,
                    # As for SQLAlchemy's connections (store/db.py): plan with the actual
                    # values, never a generic plan made while a table was nearly empty.
                    server_settings={"plan_cache_mode": "force_custom_plan"},
                )
        return self._pool

    def in_use(self) -> tuple[int, int] | None:
        """(connections in use, idle); None before the pool is opened."""
        if self._pool is None:
            return None
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        return size - idle, idle

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._open()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as conn:
            status: str = await conn.execute(sql, *args)
        return status

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
