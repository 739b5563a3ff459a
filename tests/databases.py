"""Migrated databases for the tests, made by copying a template rather than migrating.

Running every migration takes a good part of a second on PostgreSQL and a few tenths on
SQLite, and most tests want a database at the newest schema. So each test session (each
pytest-xdist worker process: it has servers of its own) migrates one template per store,
once, and every test gets a copy of it: ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL
(the template is left with no connection, as PostgreSQL requires), a copy of the file on
SQLite. A copy is the very database a migration would have made; Clarion's own start-up
still runs ``migrate``, which finds nothing to do.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from clarion.config import Settings
from clarion.store.db import create_engine, migrate
from servers import admin, run_async


async def _migrate(database_url: str) -> None:
    engine = create_engine(Settings(database_url=database_url))
    try:
        await migrate(engine)
    finally:
        # No connection may stay open to a template while it is copied.
        await engine.dispose()


def _database(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """The name of a database on ``pg_server`` at the newest schema, made once per session
    (named uniquely, so sessions sharing a server given by ``CLARION_TEST_POSTGRES_URL``
    keep apart) and dropped at the end."""
    name = f"clarion_template_{uuid.uuid4().hex[:16]}"
    run_async(admin(pg_server, f'CREATE DATABASE "{name}"'))
    try:
        run_async(_migrate(_database(pg_server, name)))
        yield name
    finally:
        run_async(admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def migrated_postgres_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """The SQLAlchemy URL of a database of its own at the newest schema (a copy of the
    session's template), dropped afterwards."""
    name = f"clarion_test_{uuid.uuid4().hex[:16]}"
    run_async(admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield _database(pg_server, name)
    finally:
        run_async(admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, made once per session."""
    path = tmp_path_factory.mktemp("sqlite-template") / "clarion.db"
    run_async(_migrate(f"sqlite+aiosqlite:///{path}"))
    # Closing the last connection checkpoints the write-ahead log into the file: the file
    # alone is the whole database.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def migrated_sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """The URL of a SQLite file of the test's own (``clarion.db`` in ``tmp_path``) at the
    newest schema: a copy of the session's template."""
    path = tmp_path / "clarion.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"
