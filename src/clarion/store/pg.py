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
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from clarion.store.day_partitions import DayPartitions

log = logging.getLogger(__name__)


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


# Statements planned once per connection (:func:`fixed_plan`), each with the tables that must
# have grown before it is (``FEW_PAGES``); and the settings of the connections that run them.
_FIXED: dict[str, frozenset[str]] = {}
_FIXED_SETTINGS = {
    # One generic plan per statement and connection, made at its first execution.
    "plan_cache_mode": "force_generic_plan",
    # Whatever the statistics say when that plan is made (a new database, a table loaded a
    # moment before), a table is read through an index: the plan's shape cannot be one that
    # only suits a near-empty table.
    "enable_seqscan": "off",
}
# A table probed by a key is read through whichever index costs least; on a near-empty
# table, one read whole costs as little as the key's probe: another index that ends with
# the key (each index of `notifications` and of a day partition of `deliveries` ends with
# the id), or the key's own, merged with a sorted list of keys (`recipients`).
# A plan made once then would keep that index for the connection's life, so a statement
# probing such a table is planned once only after the table has this many pages (8 kB
# each), and with its values meanwhile; which tables have grown is looked at again every
# GROWING seconds while one has not.
FEW_PAGES = 16
GROWING = 5.0
_GROWN = (
    "SELECT t FROM unnest($1::text[]) AS t "
    "WHERE pg_relation_size(to_regclass(t)) >= $2::bigint * current_setting('block_size')::int"
)


def fixed_plan(sql: str, grown: Iterable[str] = ()) -> str:
    """Mark ``sql`` as a statement to plan once per connection instead of at each
    execution, once the tables of ``grown`` have FEW_PAGES pages; the statement itself, for
    a module-level constant.

    Only for a statement whose plan cannot gain from the values: no partition to prune by
    them (a generic plan reads every partition an ``= ANY($n)`` list names), and every
    table read by a key its values fill in, which a plan made on any statistics reads the
    same way (nested loops over the key's index, checked in tests/test_fixed_plans.py);
    ``grown`` names the tables where that holds only once they hold rows (above).
    Planning such a statement at each execution cost PostgreSQL 0.2-0.4 ms a time
    (docs/performance.md, "Planning every statement anew")."""
    _FIXED[sql] = frozenset(grown)
    return sql


# How long a statement waits for one of the pool's connections. asyncpg waits forever by
# default: one connection never given back would stop every later statement, silently.
# Bounded, the wait fails (TimeoutError, an outage to the callers), and the unit of work
# that needed the connection is retried like any other that met an unreachable database.
ACQUIRE_TIMEOUT = 30.0


# How long closing waits for the connections in use to be given back. asyncpg's close waits
# for them forever: one never given back (a statement's task left waiting on something
# that will not come) would keep a stopping process from ever ending. Past this, the
# connections still in use are closed under their users.
CLOSE_TIMEOUT = 10.0


class PgPool:
    """A small asyncpg pool, opened on first use; and beside it another, opened on first
    use too, for the statements planned once per connection (:func:`fixed_plan`)."""

    def __init__(self, database_url: str, *, size: int = 4) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._fixed: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        # The day partitions of `deliveries` that statements by delivery id may name.
        self.days = DayPartitions(self)
        # The tables of fixed_plan's `grown` seen grown, and when to look again.
        self._grown: frozenset[str] = frozenset()
        self._look_at = 0.0
        self._looking = asyncio.Lock()

    async def _open(self, fixed: bool = False) -> asyncpg.Pool:
        pool = self._fixed if fixed else self._pool
        if pool is not None:
            return pool
        async with self._opening:
            pool = self._fixed if fixed else self._pool
            if pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._size,
                    init=_init,
                    reset=_no_reset,
                    command_timeout=30,
                    # As for SQLAlchemy's connections (store/db.py): plan with the actual
                    # values, never a generic plan made while a table was nearly empty;
                    # but for the statements whose plan the values cannot change.
                    server_settings=_FIXED_SETTINGS
                    if fixed
                    else {"plan_cache_mode": "force_custom_plan"},
                )
                if fixed:
                    self._fixed = pool
                else:
                    self._pool = pool
        return pool

    def in_use(self) -> tuple[int, int] | None:
        """(connections in use, idle) of both pools; None before either is opened."""
        pools = [p for p in (self._pool, self._fixed) if p is not None]
        if not pools:
            return None
        size = sum(p.get_size() for p in pools)
        idle = sum(p.get_idle_size() for p in pools)
        return size - idle, idle

    @asynccontextmanager
    async def connection(self, fixed: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool for statements planned at each execution, or of the
        one for those planned once (``fixed``)."""
        pool = await self._open(fixed)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn

    async def fixed(self, sql: str) -> bool:
        """Whether ``sql`` runs planned once (:func:`fixed_plan`) now."""
        grown = _FIXED.get(sql)
        if grown is None:
            return False
        if grown <= self._grown:
            return True
        if time.monotonic() >= self._look_at:
            await self._look_at_sizes()
        return grown <= self._grown

    async def _look_at_sizes(self) -> None:
        async with self._looking:
            if time.monotonic() < self._look_at:
                return  # looked meanwhile
            wanted = sorted(set().union(*_FIXED.values()) - self._grown)
            async with self.connection() as conn:
                rows = await conn.fetch(_GROWN, wanted, FEW_PAGES)
            self._grown |= {row[0] for row in rows}
            self._look_at = time.monotonic() + GROWING

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection(await self.fixed(sql)) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection(await self.fixed(sql)) as conn:
            status: str = await conn.execute(sql, *args)
        return status

    async def aclose(self) -> None:
        pools = [p for p in (self._pool, self._fixed) if p is not None]
        self._pool = self._fixed = None
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                held = pool.get_size() - pool.get_idle_size()
                log.warning(
                    "closing PostgreSQL connections still in use after %gs: %d",
                    CLOSE_TIMEOUT,
                    held,
                )
                pool.terminate()
