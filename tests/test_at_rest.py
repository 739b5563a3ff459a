"""With nothing to do, the roles look seldom and write nothing: the API's inbox upkeep and
the scheduler's looks are one read each, and only one run waker per planner looks at the
table while no backlog of due runs calls for more hands."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select, update

from clarion.pipeline.planner import Planner
from clarion.pipeline.recurring import Recurring
from clarion.pipeline.runtime import Roles
from clarion.pipeline.scheduler import Relay
from clarion.store.db import utcnow, write_tx
from clarion.store.tables import workflow_runs
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ who }}"}}}


class Watched:
    """The SQLAlchemy pool checkouts and statements (by first word) made meanwhile."""

    def __init__(self, app: Harness) -> None:
        self.checkouts = 0
        self.statements: list[str] = []
        self._engine = app.ctx.engine.sync_engine

    def _checked_out(self, *_: Any) -> None:
        self.checkouts += 1

    def _executed(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement.lstrip().split(None, 1)[0].upper())

    def __enter__(self) -> Watched:
        event.listen(self._engine.pool, "checkout", self._checked_out)
        event.listen(self._engine, "before_cursor_execute", self._executed)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine.pool, "checkout", self._checked_out)
        event.remove(self._engine, "before_cursor_execute", self._executed)

    def only_reads(self, app: Harness, looks: int) -> None:
        """On PostgreSQL, the looks went to its direct pool and SQLAlchemy did nothing;
        on SQLite, ``looks`` checkouts that only read."""
        if app.ctx.pg is not None:
            assert self.checkouts == 0
            assert self.statements == []
        else:
            assert self.checkouts == looks, self.statements
            assert set(self.statements) == {"SELECT"}, self.statements


async def test_the_inbox_upkeep_at_rest_is_one_read(backend: tuple[str, str]) -> None:
    async with running(make_settings(*backend), Roles()) as app:
        gate = app.ctx.inbox
        gate.submit = lambda items: asyncio.sleep(0, [])  # an API process's intake
        await gate.upkeep()  # the first also sweeps expired tickets
        with Watched(app) as watched:
            assert await gate.upkeep() == 0
        watched.only_reads(app, looks=1)


async def test_the_schedulers_looks_at_rest_write_nothing(backend: tuple[str, str]) -> None:
    async with running(make_settings(*backend), Roles()) as app:
        relay, schedules = Relay(app.ctx), Recurring(app.ctx)
        with Watched(app) as watched:
            assert await relay.run_once() == 0
            assert await schedules.run_once() == 0
        # The outbox, due schedules, schedule runs: a look each (digest windows are closed
        # by their carrier runs, which the planners' run waker looks for).
        watched.only_reads(app, looks=3)


async def _waiting_runs(app: Harness, planner: Planner, count: int) -> None:
    """A workflow of a long delay sent to ``count`` recipients, planned by ``planner``
    (no planner runs in the harness), every run stored waiting; then each made due."""
    await app.put_template("hello", EMAIL)
    rids = [f"r{i}" for i in range(count)]
    for rid in rids:
        await app.put_recipient(rid, email=f"{rid}@example.com")
    steps = [
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "hello"},
    ]
    response = await app.client.put(
        "/v1/workflows/later", json={"name": "later", "steps": steps}, headers=app.auth
    )
    assert response.status_code in (200, 201), response.text
    sent = await app.send({"workflow": "later", "to": {"recipient_ids": rids}, "data": {}})
    assert sent.status_code == 202, sent.text

    async def all_waiting() -> bool:
        await planner.run_once(0.1)
        return await _statuses(app) == ["waiting"] * count

    await app.until(all_waiting)
    # Due now (their delays' own ends stay an hour away: woken, each waits again).
    async with write_tx(app.ctx.engine) as conn:
        await conn.execute(update(workflow_runs).values(wake_at=utcnow() - timedelta(seconds=1)))


async def _statuses(app: Harness) -> list[str]:
    async with app.ctx.engine.connect() as conn:
        statuses = (await conn.execute(select(workflow_runs.c.status))).scalars()
        return sorted(str(status) for status in statuses)


async def _turns(app: Harness) -> list[int]:
    async with app.ctx.engine.connect() as conn:
        return sorted((await conn.execute(select(workflow_runs.c.turn))).scalars())


async def test_extra_run_wakers_join_only_under_a_backlog(backend: tuple[str, str]) -> None:
    async with running(make_settings(*backend), Roles(api=True)) as app:
        planner = Planner(app.ctx, "hands")
        await _waiting_runs(app, planner, 3)
        before = await _turns(app)
        # Without a backlog an extra hand takes nothing, however long it is left.
        stop = asyncio.Event()
        idle_hand = asyncio.create_task(planner.runs.help_once(stop))
        for _ in range(20):
            await asyncio.sleep(0)
        stop.set()
        assert await idle_hand == 0
        assert await _turns(app) == before
        # A wake that finds more due than its batch calls the hand in: it takes the rest.
        hand = asyncio.create_task(planner.runs.help_once(asyncio.Event()))
        assert await planner.runs.wake_once(limit=1) == 1
        assert await asyncio.wait_for(hand, 30) == 2
        assert await _turns(app) == [turn + 1 for turn in before]
        assert await _statuses(app) == ["waiting"] * 3
