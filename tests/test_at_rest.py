"""With nothing to do, the roles look seldom and write nothing: the API's inbox upkeep is
one read, and only one run waker per planner looks at the table while no backlog of due
runs calls for more hands."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select, update

from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.store.db import utcnow, write_tx
from clarion.store.tables import workflow_runs
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ who }}"}}}


async def test_the_inbox_upkeep_at_rest_is_one_read(backend: tuple[str, str]) -> None:
    async with running(make_settings(*backend), Roles()) as app:
        gate = app.ctx.inbox
        gate.submit = lambda items: asyncio.sleep(0, [])  # an API process's intake
        await gate.upkeep()  # the first also sweeps expired tickets
        checkouts: list[Any] = []
        statements: list[str] = []

        def checked_out(*_: Any) -> None:
            checkouts.append(None)

        def executed(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement.lstrip().split(None, 1)[0].upper())

        engine = app.ctx.engine.sync_engine
        event.listen(engine.pool, "checkout", checked_out)
        event.listen(engine, "before_cursor_execute", executed)
        try:
            assert await gate.upkeep() == 0
        finally:
            event.remove(engine.pool, "checkout", checked_out)
            event.remove(engine, "before_cursor_execute", executed)
        assert len(checkouts) == 1
        assert statements
        assert set(statements) == {"SELECT"}, statements


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
