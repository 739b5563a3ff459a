"""``migrate``: a new database is brought to the newest migration, an older schema is
upgraded, and a schema already there is left as it is after one read of alembic's table,
without loading the migration scripts (every process and every test calls it at start)."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from clarion.pipeline.context import open_context
from clarion.store import db
from clarion.store.db import _alembic_config, _heads, migrate
from harness import make_settings


async def _versions(engine: db.AsyncEngine) -> frozenset[str]:
    async with engine.connect() as conn:
        stored = await conn.execute(text("SELECT version_num FROM alembic_version"))
        return frozenset(stored.scalars())


async def test_a_schema_at_the_newest_migration_is_left_as_it_is(
    unmigrated_backend: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    context = await open_context(make_settings(*unmigrated_backend))
    engine = context.engine
    real = command.upgrade
    upgrades: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> None:
        upgrades.append(args[1:])
        real(*args, **kwargs)

    monkeypatch.setattr(db.command, "upgrade", counted)
    try:
        await migrate(engine)  # a new database
        assert upgrades == [("head",)]
        assert await _versions(engine) == _heads()
        assert len(_heads()) == 1

        await migrate(engine)  # already there: alembic is not asked
        assert upgrades == [("head",)]

        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "-1"))
        assert await _versions(engine) != _heads()
        await migrate(engine)  # one behind: upgraded
        assert upgrades == [("head",), ("head",)]
        assert await _versions(engine) == _heads()
    finally:
        await context.aclose()
