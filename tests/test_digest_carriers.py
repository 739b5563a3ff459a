"""Category digest windows carried by runs: each window opened is stored with its carrier,
a run of the built-in workflow ``~digest`` waiting until the window closes (at once when
it fills); the run engine closes the window into its digest under the carrier's lease,
once, whether the close is replayed after its commit or dies before it. On both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, insert, select, update

from clarion.domain.digests import MAX_ITEMS, digest_notification_id
from clarion.pipeline.context import open_context
from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.pipeline.scheduler import Retention
from clarion.store import digests as digest_store
from clarion.store import runs as run_store
from clarion.store.db import _alembic_config, as_utc, migrate, utcnow
from clarion.store.tables import (
    digest_items,
    digest_windows,
    notifications,
    outbox,
    template_versions,
    templates,
    workflow_runs,
)
from digest_kit import carrier_id, close_after, digests_made, time_passes
from harness import Harness, make_settings, running

HOUR = timedelta(hours=1)
TEMPLATE: dict[str, Any] = {
    "category": "updates",
    "channels": {
        "email": {
            "subject": "Update {{ what }}",
            "text": "{{ what }}",
            "digest": {
                "subject": "{{ count }} updates",
                "text": "{% for item in items %}{{ item.what }};{% endfor %}",
            },
        }
    },
}


async def _setup(app: Harness) -> None:
    response = await app.client.put(
        "/v1/categories/updates", json={"digest": {"window": "1h"}}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    await app.put_template("news", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com")


async def _send(app: Harness, what: str) -> str:
    body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"what": what}}
    response = await app.send(body)
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def _window(app: Harness) -> dict[str, Any]:
    async with app.ctx.engine.connect() as conn:
        [row] = (await conn.execute(select(digest_windows))).mappings().all()
    return dict(row)


async def _run(app: Harness, run_id: str) -> dict[str, Any]:
    async with app.ctx.engine.connect() as conn:
        query = select(workflow_runs).where(workflow_runs.c.id == run_id)
        row = (await conn.execute(query)).mappings().one()
    return dict(row)


async def _carriers(app: Harness) -> list[dict[str, Any]]:
    async with app.ctx.engine.connect() as conn:
        query = select(workflow_runs).where(workflow_runs.c.workflow == "~digest")
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def _emails(app: Harness) -> list[dict[str, Any]]:
    response = await app.client.get(
        "/v1/sandbox/messages", params={"channel": "email"}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


@pytest.fixture
async def held(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion with the API alone: no planner wakes runs, so the test advances them."""
    async with running(make_settings(*backend), Roles(api=True)) as harness:
        await _setup(harness)
        yield harness


async def _hold(app: Harness, nids: list[str], at: Any = None) -> None:
    """Hold a delivery of each of these notifications for the digest (as a planner does)."""
    items = [
        digest_store.Held(app.tenant_id, "u1", "email", "updates", "", 3600, f"dlv_{nid}", nid)
        for nid in nids
    ]
    await digest_store.hold(app.ctx.engine, items, at or utcnow())


async def test_a_window_is_carried_by_a_waiting_run_shown_once_the_digest_exists(
    app: Harness,
) -> None:
    await _setup(app)
    for what in ("a", "b"):
        await _send(app, what)
    await app.drain()
    window = await _window(app)
    # One run for the window, whatever it holds.
    [carrier] = await _carriers(app)
    digest_id = digest_notification_id(window["id"])
    assert carrier["id"] == carrier_id(window)
    assert (carrier["recipient_id"], carrier["notification_id"]) == ("u1", digest_id)
    assert (carrier["status"], carrier["turn"], carrier["version"]) == ("waiting", 0, 1)
    assert as_utc(carrier["wake_at"]) == as_utc(window["closes_at"])
    [step] = carrier["steps"]
    assert (step["id"], step["status"], step["window"]) == ("collect", "waiting", window["id"])
    assert step["until"] == as_utc(window["closes_at"]).timestamp()
    # Before the digest exists there is nothing to show it under; the export lists it.
    response = await app.client.get(f"/v1/notifications/{digest_id}/runs", headers=app.auth)
    assert response.status_code == 404
    export = (await app.client.get("/v1/recipients/u1/export", headers=app.auth)).json()
    assert [(r["workflow"], r["status"]) for r in export["workflow_runs"]] == [
        ("~digest", "waiting")
    ]
    assert export["workflow_runs"][0]["notification_id"] == digest_id

    assert await close_after(app, HOUR + timedelta(seconds=1)) == 1
    response = await app.client.get(f"/v1/notifications/{digest_id}/runs", headers=app.auth)
    assert response.status_code == 200, response.text
    [run] = response.json()["data"]
    assert (run["workflow"], run["status"], run["step"], run["waiting_until"]) == (
        "~digest",
        "completed",
        None,
        None,
    )
    [shown] = run["steps"]
    assert (shown["id"], shown["status"], shown["count"]) == ("collect", "completed", 2)
    assert shown["ended_at"] is not None
    digest = await app.notification(digest_id)
    assert digest["status"] == "completed"
    assert digest["run_totals"] == {"completed": 1}
    [email] = await _emails(app)
    assert email["content"]["subject"] == "2 updates"


async def test_a_full_window_wakes_its_carrier_at_once(held: Harness) -> None:
    app = held
    opened = utcnow() - timedelta(minutes=5)
    nids = [await _send(app, f"n{n}") for n in range(MAX_ITEMS)]
    await _hold(app, nids[:-1], opened)
    window = await _window(app)
    carrier = await _run(app, carrier_id(window))
    assert as_utc(carrier["wake_at"]) == opened + HOUR
    # Nothing is due: a wake takes nothing.
    runs = Planner(app.ctx, "waker").runs
    assert await runs.wake_once() == 0
    filled = utcnow()
    await _hold(app, nids[-1:], filled)
    window = await _window(app)
    assert (window["held"], as_utc(window["closes_at"])) == (MAX_ITEMS, filled)
    assert as_utc((await _run(app, carrier["id"]))["wake_at"]) == filled
    # The next wake closes it, with every item in the order they were accepted.
    assert await runs.wake_once() == 1
    assert await digests_made(app) == 1
    done = await _run(app, carrier["id"])
    assert (done["status"], done["wake_at"]) == ("completed", None)
    assert done["steps"][0]["count"] == MAX_ITEMS
    async with app.ctx.engine.connect() as conn:
        query = select(notifications.c.data).where(notifications.c.digest_of == window["id"])
        data = (await conn.execute(query)).scalar_one()
    assert [item["what"] for item in data["items"]] == [f"n{n}" for n in range(MAX_ITEMS)]
    # What comes next opens the next window, with a carrier of its own.
    await _hold(app, [await _send(app, "later")])
    assert len(await _carriers(app)) == 2


async def _outboxed(app: Harness, nid: str) -> int:
    query = select(func.count()).select_from(outbox).where(outbox.c.notification_id == nid)
    async with app.ctx.engine.connect() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def test_a_close_replayed_after_its_commit_makes_nothing_twice(held: Harness) -> None:
    app = held
    await _hold(app, [await _send(app, w) for w in ("a", "b")])
    window = await _window(app)
    digest_id = digest_notification_id(window["id"])
    await time_passes(app, HOUR + timedelta(seconds=1))
    lease = app.ctx.settings.workflow_run_lease
    [taken] = await run_store.take_due(app.ctx.engine, utcnow(), lease, 10, app.ctx.pg)
    runs = Planner(app.ctx, "waker").runs
    await runs.advance([taken], utcnow())
    assert await digests_made(app) == 1
    assert await _outboxed(app, digest_id) == 1
    # Advanced again under the same lease (its advancer knows nothing of the commit), and
    # under an older one: the run has ended, and nothing is done.
    await runs.advance([taken], utcnow())
    await runs.advance([{**taken, "turn": taken["turn"] - 1}], utcnow())
    done = await _run(app, taken["id"])
    assert (done["status"], done["turn"], done["steps"][0]["count"]) == ("completed", 1, 2)
    assert await digests_made(app) == 1
    # A carrier that finds its window closed already (a scheduler of an earlier version
    # closed it during an upgrade) ends without making anything.
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == taken["id"])
            .values(status="waiting", wake_at=utcnow() - timedelta(seconds=1))
        )
    assert await runs.wake_once() == 1
    assert (await _run(app, taken["id"]))["status"] == "completed"
    assert await digests_made(app) == 1
    assert await _outboxed(app, digest_id) == 1


@pytest.fixture
async def short_lease(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion in this process with every role, runs leased for a second."""
    async with running(make_settings(*backend, workflow_run_lease=1.0)) as harness:
        await _setup(harness)
        yield harness


async def test_a_close_that_dies_before_its_commit_is_taken_again(
    short_lease: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advancer closing a window dies after writing the digest, before the commit (here
    the database goes out of reach as the carrier is stored: an outage leaves the run to its
    lease, as a death does). Nothing of it stays; the carrier, taken again when its lease
    ends, makes the one digest."""
    app = short_lease
    for what in ("a", "b"):
        await _send(app, what)
    await app.drain()
    window = await _window(app)
    real = run_store.save_in
    tries: list[int] = []

    async def dies_once(conn: Any, rows: Any) -> None:
        if any(row["id"] == carrier_id(window) for row in rows):
            tries.append(await _pending_digests(conn))
            if len(tries) == 1:
                raise ConnectionError("the advancer died here")
        await real(conn, rows)

    monkeypatch.setattr(run_store, "save_in", dies_once)
    await time_passes(app, HOUR + timedelta(seconds=1))

    async def closed() -> bool:
        return (await _run(app, carrier_id(window)))["status"] == "completed"

    await app.until(closed)
    await app.drain()
    # Each try had made the digest in its transaction; the first one's went with it.
    assert tries == [1, 1]
    assert await digests_made(app) == 1
    [email] = await _emails(app)
    assert (email["content"]["subject"], email["content"]["text"]) == ("2 updates", "a;b;")


async def _pending_digests(conn: Any) -> int:
    n = notifications
    query = select(func.count()).select_from(n).where(n.c.digest_of.is_not(None))
    return int((await conn.execute(query)).scalar() or 0)


async def test_a_window_whose_notifications_were_all_cancelled_closes_with_none(
    app: Harness,
) -> None:
    await _setup(app)
    nids = [await _send(app, what) for what in ("a", "b")]
    await app.drain()
    window = await _window(app)
    for nid in nids:
        response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
        assert response.status_code == 202, response.text
    assert await close_after(app, HOUR + timedelta(seconds=1)) == 0
    closed = await _window(app)
    assert closed["closed_at"] is not None
    assert closed["notification_id"] is None
    done = await _run(app, carrier_id(window))
    assert (done["status"], done["steps"][0]["count"]) == ("completed", 0)
    assert await _emails(app) == []
    response = await app.client.get(
        f"/v1/notifications/{digest_notification_id(window['id'])}/runs", headers=app.auth
    )
    assert response.status_code == 404


async def test_a_template_gone_before_the_close(app: Harness) -> None:
    """The template of the held notifications changed to one without digest content: the
    digest's delivery fails (render_error). Its rows gone altogether: the window still
    closes into its digest, which has nothing to send."""
    await _setup(app)
    await _send(app, "a")
    await app.drain()
    plain = {"category": "updates", "channels": {"email": {"subject": "S", "text": "T"}}}
    await app.put_template("news", plain)
    assert await close_after(app, HOUR + timedelta(seconds=1)) == 1
    first = await _window(app)
    digest = await app.notification(digest_notification_id(first["id"]))
    assert [(d["status"], d["reason"]) for d in digest["deliveries"]] == [
        ("failed", "render_error")
    ]

    await app.put_template("news", TEMPLATE)
    await _send(app, "b")
    await app.drain()
    async with app.ctx.engine.begin() as conn:
        await conn.execute(delete(template_versions))
        await conn.execute(delete(templates))
        [second] = (
            (await conn.execute(select(digest_windows).where(digest_windows.c.closed_at.is_(None))))
            .mappings()
            .all()
        )
    assert await close_after(app, HOUR + timedelta(seconds=1)) == 1
    done = await _run(app, carrier_id(dict(second)))
    assert (done["status"], done["steps"][0]["count"]) == ("completed", 1)
    digest = await app.notification(digest_notification_id(second["id"]))
    assert digest["deliveries"] == []
    assert digest["status"] == "completed"


async def test_erasure_removes_the_carrier(app: Harness) -> None:
    await _setup(app)
    await app.put_recipient("u2", email="u2@example.com")
    await _send(app, "a")
    body = {"template": "news", "to": {"recipient_id": "u2"}, "data": {"what": "b"}}
    assert (await app.send(body)).status_code == 202
    await app.drain()
    assert sorted(c["recipient_id"] for c in await _carriers(app)) == ["u1", "u2"]
    response = await app.client.delete("/v1/recipients/u1", headers=app.auth)
    assert response.status_code == 204
    assert [c["recipient_id"] for c in await _carriers(app)] == ["u2"]
    assert await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1") == []
    # The other recipient's window closes as usual.
    assert await close_after(app, HOUR + timedelta(seconds=1)) == 1


async def test_the_migration_gives_each_open_window_a_carrier(
    unmigrated_backend: tuple[str, str],
) -> None:
    """Migration 0036: a window open at the upgrade gets its carrier (one overdue is taken
    at the next wake and closed); a closed one gets none. Down again, the carriers go."""
    settings = make_settings(*unmigrated_backend)
    context = await open_context(settings)
    engine = context.engine
    now = utcnow()
    row = {"tenant_id": "t1", "channel": "email", "category": "updates", "held": 1}
    windows = [
        {**row, "id": "dgw_later", "recipient_id": "u1", "dkey": "", "closes_at": now + HOUR},
        {**row, "id": "dgw_overdue", "recipient_id": "u2", "dkey": "", "closes_at": now - HOUR},
        {**row, "id": "dgw_closed", "recipient_id": "u1", "dkey": "x", "closes_at": now - HOUR},
    ]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0035"))
            await conn.execute(
                insert(digest_windows),
                [
                    {
                        **w,
                        "opened_at": w["closes_at"] - HOUR,
                        "closed_at": now if w["id"] == "dgw_closed" else None,
                        "notification_id": None,
                    }
                    for w in windows
                ],
            )
        await migrate(engine)
        async with engine.connect() as conn:
            query = select(workflow_runs).order_by(workflow_runs.c.recipient_id)
            carriers = [dict(r) for r in (await conn.execute(query)).mappings()]
        assert [c["id"] for c in carriers] == [carrier_id(w) for w in windows[:2]]
        for carrier, window in zip(carriers, windows, strict=False):
            assert carrier["notification_id"] == digest_notification_id(window["id"])
            assert (carrier["workflow"], carrier["status"], carrier["turn"]) == (
                "~digest",
                "waiting",
                0,
            )
            assert as_utc(carrier["wake_at"]) == window["closes_at"]
            [step] = carrier["steps"]
            assert (step["id"], step["window"]) == ("collect", window["id"])
            assert step["until"] == window["closes_at"].timestamp()
        # The run engine takes the overdue one: its window closes (with nothing standing
        # in it, no digest).
        assert await Planner(context, "waker").runs.wake_once() == 1
        async with engine.connect() as conn:
            status = select(workflow_runs.c.recipient_id, workflow_runs.c.status)
            assert sorted((await conn.execute(status)).all()) == [
                ("u1", "waiting"),
                ("u2", "completed"),
            ]
            closed = select(digest_windows.c.id).where(digest_windows.c.closed_at.is_not(None))
            assert sorted((await conn.execute(closed)).scalars()) == ["dgw_closed", "dgw_overdue"]
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0035"))
            left = await conn.execute(select(func.count()).select_from(workflow_runs))
            assert left.scalar() == 0
    finally:
        await context.aclose()


async def test_closed_windows_are_pruned_by_the_retention_pass(held: Harness) -> None:
    app = held
    await _hold(app, [await _send(app, "a")])
    await time_passes(app, HOUR + timedelta(seconds=1))
    assert await Planner(app.ctx, "waker").runs.wake_once() == 1
    keeper = Retention(app.ctx)
    await keeper.run_once()
    assert (await _window(app))["closed_at"] is not None  # kept a day
    async with app.ctx.engine.begin() as conn:
        await conn.execute(update(digest_windows).values(closed_at=utcnow() - 25 * HOUR))
    await keeper.run_once()
    async with app.ctx.engine.connect() as conn:
        for table in (digest_windows, digest_items):
            left = await conn.execute(select(func.count()).select_from(table))
            assert left.scalar() == 0, table.name


async def test_an_overdue_window_without_a_carrier_is_given_one(held: Harness) -> None:
    """A window opened without its carrier (by a planner of an earlier version, during an
    upgrade's rolling restart) gets one from the retention pass once it is overdue, and
    the run engine closes it."""
    app = held
    await _hold(app, [await _send(app, "a")])
    window = await _window(app)
    async with app.ctx.engine.begin() as conn:
        await conn.execute(delete(workflow_runs))
    keeper, runs = Retention(app.ctx), Planner(app.ctx, "waker").runs
    await keeper.run_once()
    assert await _carriers(app) == []  # not overdue: left alone
    await time_passes(app, HOUR + timedelta(minutes=6))
    await keeper.run_once()
    [carrier] = await _carriers(app)
    assert carrier["id"] == carrier_id(window)
    assert as_utc(carrier["wake_at"]) == as_utc((await _window(app))["closes_at"])
    assert await runs.wake_once() == 1
    assert await digests_made(app) == 1
    # Overdue windows whose carriers are there keep them.
    await _hold(app, [await _send(app, "b")])
    await time_passes(app, HOUR + timedelta(minutes=6))
    before = await _carriers(app)
    await keeper.run_once()
    assert await _carriers(app) == before
