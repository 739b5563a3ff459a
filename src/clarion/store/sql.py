"""Small SQL helpers: those that differ by dialect, and one read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Executable, FromClause, RowMapping, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


def _sqlite_from_hint(_compiler: Any, _table: FromClause, text: str | None) -> str | None:
    return text


# SQLAlchemy's SQLite compiler drops table hints, but SQLite has one: `INDEXED BY name`
# after a table names the index to use. Queries ask for it with
# `.with_hint(table, "INDEXED BY ...", "sqlite")` (store/inbox.py).
SQLiteCompiler.get_from_hint_text = _sqlite_from_hint  # type: ignore[method-assign,assignment]


class db_now(FunctionElement[datetime]):
    """The database's clock, as a timestamp compared with stored ones: ``now()`` on
    PostgreSQL; on SQLite the time to the millisecond in the form SQLAlchemy stores
    timestamps in (``CURRENT_TIMESTAMP`` has whole seconds only)."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now)
def _db_now(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def insert_ignoring_conflicts(conn: AsyncConnection, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def upsert(conn: AsyncConnection, table: Table, keys: list[str], update: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET`` the given columns from the new row."""
    stmt: Any = (
        postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)
    )
    return stmt.on_conflict_do_update(
        index_elements=keys, set_={name: stmt.excluded[name] for name in update}
    )


async def first_row(engine: AsyncEngine, query: Executable) -> RowMapping | None:
    """The first row a read returns, or None."""
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def present(conn: AsyncConnection, column: Column[Any], keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that some row holds in ``column`` (a key column: looked up by key,
    a thousand at a time)."""
    found: set[str] = set()
    for part in chunks(list(keys), 1000):
        found.update((await conn.execute(select(column).where(column.in_(part)))).scalars())
    return found
