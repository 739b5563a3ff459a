"""SQLite through aiosqlite, one trip to the connection's thread per statement.

aiosqlite runs each SQLite connection in a thread of its own; every call on it is a trip:
the call queued for the thread, then its result handed back to the event loop, which
resumes the caller when it next gets round to it. SQLAlchemy's adapter makes four trips
for one statement (a cursor made, the statement run, its rows fetched, the cursor closed),
one for a commit and one more for the rollback with which the pool takes a connection
back, even when there is no transaction to end.

In one process (``clarion serve``) writers take turns (``db.write_tx``), and a writer
holds its turn across all of its trips: under load each trip waited about half a
millisecond for the busy event loop, so a claim or a status write of a few SQL statements
held the turn for about 10 ms, nearly all of it waiting, and the turns, back to back,
bounded the whole process (docs/performance.md, "Embedded: one trip per statement").

Here a statement is one trip: its cursor is made, run, read to the end and closed in the
connection's thread, and what SQLAlchemy reads afterwards (the rows, ``description``,
``rowcount``, ``lastrowid``) is kept on this side. A commit or rollback with no
transaction open (``in_transaction``, which SQLite keeps and may be read from any thread)
makes no trip; sqlite3 would do nothing in the thread either. An ``INSERT`` of many
rows goes as statements of many rows each rather than row by row (``_run_many``: sqlite3's
``executemany`` gives up the GIL for every row). Streamed results
(``AsyncConnection.stream``) keep aiosqlite's own cursor, which fetches as it is read.

Passed to SQLAlchemy as the DBAPI module (``create_async_engine(..., module=dbapi())``);
it uses aiosqlite's ``Connection._execute``, the call SQLAlchemy's own adapter builds on,
and the adapter classes of SQLAlchemy 2.1 (pyproject.toml asks for SQLAlchemy 2.1 and
aiosqlite 0.22 at least), and is tested with both (tests/test_sqlite_driver.py).
"""

from __future__ import annotations

import collections
import re
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# What one statement leaves for SQLAlchemy to read: description, rowcount, lastrowid, rows.
_Outcome = tuple[Any, int, int | None, list[Any]]


def _run(conn: sqlite3.Connection, sql: str, parameters: Any) -> _Outcome:
    """In the connection's thread: one statement, from its cursor made to closed."""
    cursor = conn.cursor()
    try:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        # Read after the rows: a statement with RETURNING counts its rows as they come.
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


# An INSERT of one row of placeholders, with at most an ON CONFLICT clause after it (no
# placeholder there): one statement may insert many rows instead (``_run_many``).
_ONE_ROW = re.compile(
    r"(\s*INSERT\b.*?\bVALUES\s*)(\((?:\s*\?\s*,)*\s*\?\s*\))(\s*(?:ON\s+CONFLICT\b[^?]*)?)",
    re.IGNORECASE | re.DOTALL,
)
# Rows per statement at most: the texts are of 1, 2, 4, ... up to this many rows, so that a
# connection's cache of prepared statements holds every size any batch needs.
_ROWS_AT_ONCE = 512


def _as_one_insert(sql: str, rows: list[Any]) -> tuple[str, str, str, int] | None:
    """The INSERT's text before its row, the row, the text after it and the row's length,
    when ``rows`` can go as rows of one statement; None for anything else."""
    match = _ONE_ROW.fullmatch(sql)
    if match is None or "RETURNING" in match.group(3).upper():
        return None
    width = match.group(2).count("?")
    if not all(isinstance(row, (tuple, list)) and len(row) == width for row in rows):
        return None
    return match.group(1), match.group(2), match.group(3), width


def _run_many(conn: sqlite3.Connection, sql: str, parameters: Any) -> _Outcome:
    """In the connection's thread: one statement for many rows of parameters.

    An INSERT goes as statements of many rows each rather than through ``executemany``:
    sqlite3 gives up the GIL around every row's step and takes it back for the next row's
    parameters, and while the event loop's thread is busy each such turn waited for it
    (up to ``sys.getswitchinterval()``, 5 ms): measured, 2,000 rows took 6 to 10 s that way
    against 30 ms as rows of one statement (docs/performance.md, "Embedded: one trip per
    statement")."""
    rows = list(parameters)
    shape = _as_one_insert(sql, rows) if rows else None
    cursor = conn.cursor()
    try:
        if shape is None:
            cursor.executemany(sql, rows)
            return cursor.description, cursor.rowcount, cursor.lastrowid, []
        head, row, tail, width = shape
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
        most = min(_ROWS_AT_ONCE, 1 << max(limit, 1).bit_length() - 1)
        changed, start = 0, 0
        while start < len(rows):
            size = min(most, 1 << (len(rows) - start).bit_length() - 1)
            part = rows[start : start + size]
            cursor.execute(
                f"{head}{', '.join([row] * size)}{tail}", [v for values in part for v in values]
            )
            changed += cursor.rowcount
            start += size
        return None, changed, cursor.lastrowid, []
    finally:
        cursor.close()


class _Cursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds nothing in the connection's thread between statements."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # No cursor is made in the thread here: each statement makes its own (``_run``).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1  # sqlite3's default: ``fetchmany()`` without a size takes one row

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass  # the rows are all here already

    async def _async_soft_close(self) -> None:
        return None  # nothing to close in the thread

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._trip(_run, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._trip(_run_many, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _trip(self, run: Any, operation: Any, parameters: Any) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]
                run, connection._conn, operation, parameters
            )
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows)

    def nextset(self) -> None:
        return None  # SQLite returns one result per statement

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = _Cursor

    def _open(self) -> bool:
        """A transaction is open on the connection (no trip to read it)."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        return connection._connection is not None and connection.in_transaction

    def rollback(self) -> None:
        if self._open():
            super().rollback()

    def commit(self) -> None:
        if self._open():
            super().commit()


class _Dbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        adapted = super().connect(*arg, **kw)
        return _Connection(self, adapted._connection)


def dbapi() -> Any:
    """The DBAPI module for ``create_async_engine(..., module=...)``."""
    return _Dbapi(aiosqlite, sqlite3)
