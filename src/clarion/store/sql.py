"""Small SQL helpers: those that differ by dialect, one read, and SQLite's bulk writes."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Dialect,
    Executable,
    FromClause,
    RowMapping,
    Select,
    Table,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from clarion.store.pg import PgPool


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
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's dialect (one statement
    per table and dialect, built once: see :func:`execute_many`)."""
    return _insert_ignoring_conflicts(conn.dialect.name, table)


@functools.cache
def _insert_ignoring_conflicts(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def upsert(conn: AsyncConnection, table: Table, keys: list[str], update: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET`` the given columns from the new row
    (built once per table, columns and dialect)."""
    return _upsert(conn.dialect.name, table, tuple(keys), tuple(update))


@functools.cache
def _upsert(dialect: str, table: Table, keys: tuple[str, ...], update: tuple[str, ...]) -> Any:
    stmt: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={name: stmt.excluded[name] for name in update}
    )


async def finds_any(
    engine: AsyncEngine, pg: PgPool | None, query: Callable[[], Select[Any]], sql: str, *args: Any
) -> bool:
    """Whether the query ``query()`` makes finds a row, asked without a write transaction:
    on PostgreSQL as ``sql`` (``SELECT EXISTS (...)``, the same question in asyncpg's terms,
    over ``args``), one round trip without a pool checkout's ping, ``BEGIN`` or
    ``ROLLBACK``, and the query never built; otherwise the query read for one row. The
    looks of the roles at rest (the scheduler's, the API's) ask this first and write only
    when it finds something."""
    if pg is not None:
        [[found]] = await pg.fetch(sql, *args)
        return bool(found)
    async with engine.connect() as conn:
        return (await conn.execute(query().limit(1))).first() is not None


async def first_row(engine: AsyncEngine, query: Executable) -> RowMapping | None:
    """The first row a read returns, or None."""
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()


def grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The second of each pair, by the first (a tenant's names, a notification's
    recipients), in order."""
    found: dict[str, list[str]] = {}
    for key, value in pairs:
        found.setdefault(key, []).append(value)
    return found


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def present(conn: AsyncConnection, column: Column[Any], keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that some row holds in ``column`` (a key column: looked up by key,
    a thousand at a time)."""
    found: set[str] = set()
    for part in chunks(list(keys), 1000):
        found.update((await conn.execute(select(column).where(column.in_(part)))).scalars())
    return found


@dataclass(frozen=True, slots=True)
class _Many:
    """A statement compiled once for SQLite, and how a row becomes its parameters."""

    sql: str
    names: tuple[str, ...]  # the parameters in order: a row's key, or a fixed value's
    fixed: dict[str, Any]  # values of parameters that rows do not carry (stored form)
    processors: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The rows' parameters, built a parameter at a time over all rows (a processor
        runs once per distinct value: a batch's rows share their timestamps)."""
        columns: list[Any] = []
        for name, process in zip(self.names, self.processors, strict=True):
            if name in self.fixed:
                columns.append(itertools.repeat(self.fixed[name], len(rows)))
                continue
            values = [row[name] for row in rows]
            if process is not None:
                # By identity: values may be unhashable (JSON), and the rows hold them alive.
                seen: dict[int, Any] = {}
                values = [
                    seen[id(v)] if id(v) in seen else seen.setdefault(id(v), process(v))
                    for v in values
                ]
            columns.append(values)
        return list(zip(*columns, strict=True))


# (id of a statement, the keys of its rows) -> the statement (which keeps the id its own)
# and its compiled form, or None where SQLAlchemy must run it (see `_compile_many`).
_MANY: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Many | None]] = {}


async def execute_many(
    conn: AsyncConnection, stmt: Executable, rows: Sequence[Mapping[str, Any]]
) -> int:
    """``conn.execute(stmt, rows)`` (rows with the same keys), for the hot bulk writes of
    a statement built once, at import.

    On SQLite, SQLAlchemy's ``executemany`` turns every row into its parameters through
    generic machinery (a dict per row, a processor looked up per value) that costs more
    than the write itself. Here the statement is compiled once per set of keys, and each
    row becomes a tuple through the same type processors, so what is stored is what
    SQLAlchemy would store. A statement this cannot run exactly as SQLAlchemy would
    (``RETURNING``, ``IN`` lists, defaults computed in Python) goes through SQLAlchemy.
    The number of rows the statement changed."""
    if not rows:
        return 0
    if conn.dialect.name != "sqlite":
        return int((await conn.execute(stmt, list(rows))).rowcount)
    keys = tuple(rows[0])
    entry = _MANY.get((id(stmt), keys))
    if entry is None or entry[0] is not stmt:
        entry = _MANY[(id(stmt), keys)] = (stmt, _compile_many(stmt, keys, conn.dialect))
    many = entry[1]
    if many is None:
        return int((await conn.execute(stmt, list(rows))).rowcount)
    return int((await conn.exec_driver_sql(many.sql, many.parameters(rows))).rowcount)


def _compile_many(stmt: Executable, keys: tuple[str, ...], dialect: Dialect) -> _Many | None:
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if (
        not isinstance(compiled, SQLCompiler)
        or compiled.positiontup is None
        or compiled.effective_returning
        or compiled.update_prefetch
        or compiled.escaped_bind_names
        or any(bind.expanding for bind in compiled.binds.values())
    ):
        return None
    fixed: dict[str, Any] = {}
    for column in compiled.insert_prefetch:
        default = column.default
        if default is None or not default.is_scalar:
            return None
        fixed[column.key] = default.arg  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup)
    processors = []
    for name in names:
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name not in keys and name not in fixed:
            if bind.required:
                return None
            fixed[name] = bind.effective_value
        if name in fixed and process is not None:
            fixed[name] = process(fixed[name])
        processors.append(process)
    return _Many(compiled.string, names, fixed, tuple(processors))
