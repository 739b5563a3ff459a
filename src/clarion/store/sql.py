"""Small SQL helpers that differ by dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy import FromClause, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.ext.asyncio import AsyncConnection


def _sqlite_from_hint(_compiler: Any, _table: FromClause, text: str | None) -> str | None:
    return text


# SQLAlchemy's SQLite compiler drops table hints, but SQLite has one: `INDEXED BY name`
# after a table names the index to use. Queries ask for it with
# `.with_hint(table, "INDEXED BY ...", "sqlite")` (store/inbox.py).
SQLiteCompiler.get_from_hint_text = _sqlite_from_hint  # type: ignore[method-assign,assignment]


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


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
