"""Schedules that send a workflow: checked at the edge as a send is, each run's
notifications run the workflow for every recipient (listed, a topic, or a recipient-zone
schedule's chunks), and a run whose workflow is gone fails, saying why (on both
backends, with an injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from clarion.pipeline import recurring
from clarion.pipeline.recurring import Recurring
from clarion.store import schedule_runs as runs
from clarion.store.tables import notifications
from harness import Harness, make_settings, running
from test_schedule_runs import NO_SCHEDULER, FakeClock, _passes
from test_workflow_runs import put_workflow

EMAIL = {"channels": {"email": {"subject": "Daily", "text": "Hello {{ recipient.id }}"}}}
MAIL_STEP = {"id": "mail", "type": "channel", "channel": "email", "template": "daily"}
PARIS = "Europe/Paris"


@pytest.fixture
async def quiet(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Every role but the scheduler's loops, a template and a one-step workflow."""
    settings = make_settings(*backend, schedule_zone_rescan=30 * 86400.0)
    async with running(settings, NO_SCHEDULER) as app:
        await app.put_template("daily", EMAIL)
        await put_workflow(app, "digest", MAIL_STEP)
        yield app


async def _people(app: Harness, zones: dict[str, str | None]) -> None:
    for rid, zone in zones.items():
        fields: dict[str, Any] = {"email": f"{rid}@example.com"}
        if zone:
            fields["timezone"] = zone
        await app.put_recipient(rid, **fields)


async def _put(app: Harness, name: str, body: dict[str, Any]) -> Any:
    return await app.client.put(f"/v1/schedules/{name}", json=body, headers=app.auth)


def _schedule(notification: dict[str, Any], timezone: str = PARIS) -> dict[str, Any]:
    return {"cron": "0 9 * * *", "timezone": timezone, "notification": notification}


def _midnight(app: Harness) -> FakeClock:
    """The clock at midnight UTC, before the day's 09:00 in Paris."""
    clock = FakeClock(datetime(2027, 6, 1, 0, 0, tzinfo=UTC))
    app.ctx.clock = clock
    return clock


async def _fire_at_nine_in_paris(app: Harness, clock: FakeClock) -> None:
    """The scheduler's passes at 09:00 in Paris (each schedule stored at midnight is due
    once), then the pipeline drained."""
    clock.now = datetime(2027, 6, 1, 7, 0, tzinfo=UTC)
    await _passes(Recurring(app.ctx))
    await app.drain()


async def _completed_runs(app: Harness, nid: str) -> dict[str, dict[str, str]]:
    """By recipient: the notification's run status and its deliveries' channel statuses."""
    note = await app.notification(nid)
    assert note["workflow"] == "digest"
    assert note["template"] is None
    got: dict[str, dict[str, str]] = {}
    for run in note["runs"]:
        channels = {
            d["channel"]: d["status"]
            for d in note["deliveries"]
            if d["recipient_id"] == run["recipient_id"]
        }
        got[run["recipient_id"]] = {"run": run["status"], **channels}
    return got


async def test_a_workflow_schedule_runs_it_for_each_listed_recipient(quiet: Harness) -> None:
    app = quiet
    await _people(app, {"u1": PARIS, "u2": None})
    clock = _midnight(app)
    note = {
        "workflow": "digest",
        "cancellation_key": "june",
        "to": {"recipient_ids": ["u1", "u2"]},
        "data": {"edition": "daily"},
    }
    stored = await _put(app, "listed", _schedule(note))
    assert stored.status_code == 200, stored.text
    assert stored.json()["notification"] == {**note, "priority": "normal"}
    got = await app.client.get("/v1/schedules/listed", headers=app.auth)
    assert got.json() == stored.json()

    await _fire_at_nine_in_paris(app, clock)
    [run] = await runs.of_schedule(app.ctx.engine, app.tenant_id, "listed")
    assert (run["status"], run["recipients"], run["error"]) == (runs.COMPLETED, 2, None)
    [nid] = run["notification_ids"]
    assert await _completed_runs(app, nid) == {
        "u1": {"run": "completed", "email": "sent"},
        "u2": {"run": "completed", "email": "sent"},
    }
    async with app.ctx.engine.connect() as conn:
        row = (
            (await conn.execute(select(notifications).where(notifications.c.id == nid)))
            .mappings()
            .one()
        )
    assert (row["workflow"], row["cancellation_key"], row["template"]) == ("digest", "june", "")
    # The run's key is what it was for a template send: the schedule, due time, zone, chunk.
    assert row["idempotency_key"] == recurring.idempotency_key("listed", run["due_at"], PARIS, "u1")


async def test_the_cancellation_key_cancels_a_scheduled_runs_wait(quiet: Harness) -> None:
    app = quiet
    await _people(app, {"u1": None})
    await put_workflow(app, "later", {"id": "wait", "type": "delay", "duration": "1h"}, MAIL_STEP)
    clock = _midnight(app)
    note = {"workflow": "later", "cancellation_key": "june", "to": {"recipient_id": "u1"}}
    assert (await _put(app, "later", _schedule(note))).status_code == 200
    await _fire_at_nine_in_paris(app, clock)
    [run] = await runs.of_schedule(app.ctx.engine, app.tenant_id, "later")
    [nid] = run["notification_ids"]

    async def status() -> str:
        [one] = (await app.notification(nid))["runs"]
        found: str = one["status"]
        return found

    async def waiting() -> bool:
        return await status() == "waiting"

    await app.until(waiting)
    cancel = await app.client.post(
        "/v1/workflows/later/cancel", json={"cancellation_key": "june"}, headers=app.auth
    )
    assert cancel.status_code == 202, cancel.text
    assert cancel.json() == {"cancelled": 1}
    await app.drain()
    assert await status() == "cancelled"


async def test_topic_schedules_run_the_workflow_for_every_subscriber(
    quiet: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed-zone topic schedule is one topic send; a "recipient" one is chunks of the
    audience in each zone (two recipients per chunk here)."""
    app = quiet
    people = [f"p{i}" for i in range(5)]
    await _people(app, dict.fromkeys(people, PARIS))
    subscribed = await app.client.put(
        "/v1/topics/news/subscribers", json={"recipient_ids": people}, headers=app.auth
    )
    assert subscribed.status_code == 200, subscribed.text
    monkeypatch.setattr(recurring, "CHUNK", 2)
    clock = _midnight(app)
    note = {"workflow": "digest", "to": {"topic": "news"}}
    for name, zone in (("whole", PARIS), ("local", "recipient")):
        response = await _put(app, name, _schedule(note, zone))
        assert response.status_code == 200, response.text

    await _fire_at_nine_in_paris(app, clock)
    expected = {rid: {"run": "completed", "email": "sent"} for rid in people}
    [whole] = await runs.of_schedule(app.ctx.engine, app.tenant_id, "whole")
    assert whole["status"] == runs.COMPLETED
    [topic_send] = whole["notification_ids"]
    assert await _completed_runs(app, topic_send) == expected
    [local] = await runs.of_schedule(app.ctx.engine, app.tenant_id, "local")
    assert (local["status"], local["zone"], local["recipients"]) == (runs.COMPLETED, PARIS, 5)
    assert len(local["notification_ids"]) == 3  # 2 + 2 + 1
    got: dict[str, dict[str, str]] = {}
    for nid in local["notification_ids"]:
        chunk = await _completed_runs(app, nid)
        assert not set(chunk) & set(got)  # each recipient in one chunk
        got.update(chunk)
    assert got == expected


async def test_workflow_schedules_are_checked_at_the_edge(quiet: Harness) -> None:
    app = quiet
    await _people(app, {"u1": None})
    to = {"recipient_id": "u1"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"workflow": "missing", "to": to}, "unknown_workflow"),
        ({"workflow": "digest", "template": "daily", "to": to}, "validation_error"),
        ({"to": to}, "validation_error"),
        ({"workflow": "digest", "channels": ["email"], "to": to}, "validation_error"),
        ({"template": "daily", "cancellation_key": "k", "to": to}, "validation_error"),
        ({"workflow": "digest", "cancellation_key": "", "to": to}, "validation_error"),
        ({"workflow": "digest", "to": {"recipient_id": "nobody"}}, "unknown_recipient"),
        ({"workflow": "digest", "to": {"topic": "nothing"}}, "unknown_topic"),
        ({"template": "missing", "to": to}, "unknown_template"),
    ]
    for note, code in cases:
        response = await _put(app, "bad", _schedule(note))
        assert response.status_code == 422, (note, response.text)
        error = response.json()["error"]
        assert (error["code"], bool(error["message"])) == (code, True), (note, error)
    assert (await app.client.get("/v1/schedules/bad", headers=app.auth)).status_code == 404
    # Another tenant's workflow is not this one's.
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    await app.client.put("/v1/recipients/u1", json={"email": "u1@example.com"}, headers=other)
    foreign = await app.client.put(
        "/v1/schedules/mine",
        json=_schedule({"workflow": "digest", "to": to}),
        headers=other,
    )
    assert foreign.status_code == 422, foreign.text
    assert foreign.json()["error"]["code"] == "unknown_workflow"


async def test_a_run_whose_workflow_was_deleted_fails_saying_why(quiet: Harness) -> None:
    app = quiet
    await _people(app, {"u1": None})
    clock = _midnight(app)
    response = await _put(
        app, "orphan", _schedule({"workflow": "digest", "to": {"recipient_id": "u1"}})
    )
    assert response.status_code == 200, response.text
    gone = await app.client.delete("/v1/workflows/digest", headers=app.auth)
    assert gone.status_code == 204, gone.text

    await _fire_at_nine_in_paris(app, clock)
    [run] = await runs.of_schedule(app.ctx.engine, app.tenant_id, "orphan")
    assert run["status"] == runs.FAILED
    assert run["error"] == "unknown_workflow: no workflow with key 'digest'"
    assert run["notification_ids"] == []
    shown = await app.client.get("/v1/schedules/orphan/runs", headers=app.auth)
    [listed] = shown.json()["data"]
    assert (listed["status"], listed["error"]) == ("failed", run["error"])
    # The schedule itself stays, and looks ahead to its next due time.
    kept = (await app.client.get("/v1/schedules/orphan", headers=app.auth)).json()
    assert kept["next_run_at"] == "2027-06-02T07:00:00Z"
