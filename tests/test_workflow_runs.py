"""Workflow sends: a run per recipient through channel steps, delays on real timers,
conditions on what the recipient did, escalation, exits, pinned versions, and cancellation
by notification and by key in every state a run can be in."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from clarion.store import retention
from clarion.store.db import as_utc, utcnow
from clarion.store.tables import workflow_runs
from harness import Harness
from inbox_kit import bearer, token_for

TEMPLATE = {
    "channels": {
        "inapp": {"title": "New comment", "body": "{{ who }} commented"},
        "email": {"subject": "New comment", "text": "{{ who }} commented"},
        "sms": {"text": "{{ who }} commented"},
        "push": {"title": "New comment", "body": "{{ who }} commented"},
    }
}


async def put_workflow(app: Harness, key: str, *steps: dict[str, Any]) -> int:
    response = await app.client.put(
        f"/v1/workflows/{key}", json={"name": key, "steps": list(steps)}, headers=app.auth
    )
    assert response.status_code in (200, 201), response.text
    version: int = response.json()["version"]
    return version


async def trigger(app: Harness, key: str, rids: list[str], **extra: Any) -> str:
    response = await app.send(
        {"workflow": key, "to": {"recipient_ids": rids}, "data": {"who": "Sam"}, **extra}
    )
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def runs(app: Harness, nid: str) -> dict[str, dict[str, Any]]:
    note = await app.notification(nid)
    return {run["recipient_id"]: run for run in note["runs"]}


def channels_of(note: dict[str, Any], rid: str) -> dict[str, str]:
    return {d["channel"]: d["status"] for d in note["deliveries"] if d["recipient_id"] == rid}


async def until_status(app: Harness, nid: str, rid: str, *statuses: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update((await runs(app, nid)).get(rid, {}))
        return found.get("status") in statuses

    await app.until(reached)
    return found


@pytest.fixture
async def ready(app: Harness) -> Harness:
    await app.put_template("comment", TEMPLATE)
    for rid in ("r1", "r2"):
        await app.put_recipient(rid, email=f"{rid}@example.com", phone="+14155550100")
    return app


async def test_a_run_walks_its_steps_and_shows_each(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "comment",
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
        {"id": "loud", "type": "channel", "channel": "sms", "template": "comment",
         "if": "data.urgent"},
        {"id": "mail", "type": "channel", "channels": ["email", "sms"], "mode": "all",
         "template": "comment", "if": "steps.feed.status != 'skipped'"},
    )  # fmt: skip
    nid = await trigger(app, "comment", ["r1", "r2"])
    await app.drain()
    note = await app.notification(nid)
    assert note["workflow"] == "comment"
    assert note["template"] is None
    assert note["status"] == "completed", note
    assert note["run_totals"] == {"completed": 2}
    for rid in ("r1", "r2"):
        assert channels_of(note, rid) == {"inapp": "sent", "email": "sent", "sms": "sent"}
    run = (await runs(app, nid))["r1"]
    assert run["version"] == 1
    assert run["step"] is None
    assert run["waiting_until"] is None
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]] == ["feed", "loud", "mail"]
    assert steps["loud"]["status"] == "skipped"
    assert steps["loud"]["delivery_ids"] == []
    assert steps["mail"]["status"] == "sent"
    assert len(steps["mail"]["delivery_ids"]) == 2
    ids = {d["id"] for d in note["deliveries"]}
    assert set(steps["feed"]["delivery_ids"]) <= ids
    # The runs' own page.
    page = await app.client.get(f"/v1/notifications/{nid}/runs?limit=1", headers=app.auth)
    assert page.status_code == 200, page.text
    assert [r["recipient_id"] for r in page.json()["data"]] == ["r1"]
    assert page.json()["next_cursor"] == "r1"


async def test_in_app_then_email_only_if_unread(ready: Harness) -> None:
    """The flow of docs/workflows.md: in-app now, wait, email only if still unread. The
    delay runs on a real timer."""
    app = ready
    await put_workflow(
        app,
        "nudge",
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
        {"id": "wait", "type": "delay", "duration": "2s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment",
         "if": "not steps.feed.read"},
    )  # fmt: skip
    nid = await trigger(app, "nudge", ["r1", "r2"])
    waiting = await until_status(app, nid, "r1", "waiting")
    assert waiting["step"] == "wait"
    assert waiting["waiting_until"] is not None
    # r1 reads the in-app message while the run waits (the run waits from when its step
    # was planned: the message may still be on its way).
    token = await token_for(app, "r1")
    feed: list[dict[str, Any]] = []

    async def arrived() -> bool:
        answer = await app.client.get("/v1/inbox", headers=bearer(token))
        feed[:] = answer.json()["data"]
        return bool(feed)

    await app.until(arrived)
    read = await app.client.post(f"/v1/inbox/{feed[0]['id']}/read", headers=bearer(token))
    assert read.status_code == 200, read.text
    assert (await app.notification(nid))["status"] == "processing"
    await until_status(app, nid, "r1", "completed")
    await until_status(app, nid, "r2", "completed")
    await app.drain()
    note = await app.notification(nid)
    assert channels_of(note, "r1") == {"inapp": "sent"}
    assert channels_of(note, "r2") == {"inapp": "sent", "email": "sent"}
    mail = {
        r: {s["id"]: s for s in run["steps"]}["mail"] for r, run in (await runs(app, nid)).items()
    }
    assert mail["r1"]["status"] == "skipped"
    assert mail["r2"]["status"] == "sent"
    assert note["status"] == "completed"


async def test_first_success_goes_on_when_a_channel_cannot_be_sent(ready: Harness) -> None:
    """Push first; a recipient with no push token has no address for it, so SMS goes."""
    app = ready
    await app.put_recipient("r3", email="r3@example.com")  # no phone either
    await put_workflow(
        app,
        "alert",
        {"id": "alert", "type": "channel", "channels": ["push", "sms", "email"],
         "mode": "first_success", "template": "comment"},
    )  # fmt: skip
    nid = await trigger(app, "alert", ["r1", "r3"])
    await until_status(app, nid, "r1", "completed")
    await until_status(app, nid, "r3", "completed")
    await app.drain()
    note = await app.notification(nid)
    assert channels_of(note, "r1") == {"push": "suppressed", "sms": "sent"}
    assert channels_of(note, "r3") == {"push": "suppressed", "sms": "suppressed", "email": "sent"}
    step = (await runs(app, nid))["r3"]["steps"][0]
    assert step["status"] == "sent"
    assert len(step["delivery_ids"]) == 3


async def test_exit_ends_the_run(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "quiet",
        {"id": "stop", "type": "exit", "if": "data.who == 'Sam'"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    nid = await trigger(app, "quiet", ["r1"])
    run = await until_status(app, nid, "r1", "completed")
    assert [(s["id"], s["status"]) for s in run["steps"]] == [("stop", "exited")]
    assert (await app.notification(nid))["deliveries"] == []


async def test_a_run_keeps_the_version_it_started_with(ready: Harness) -> None:
    app = ready
    first = {"id": "mail", "type": "channel", "channel": "email", "template": "comment"}
    await put_workflow(app, "pinned", {"id": "wait", "type": "delay", "duration": "1s"}, first)
    nid = await trigger(app, "pinned", ["r1"])
    await until_status(app, nid, "r1", "waiting")
    sms = {"id": "text", "type": "channel", "channel": "sms", "template": "comment"}
    assert await put_workflow(app, "pinned", sms) == 2
    run = await until_status(app, nid, "r1", "completed")
    assert run["version"] == 1
    await app.drain()
    assert channels_of(await app.notification(nid), "r1") == {"email": "sent"}


async def _cancel_by_key(app: Harness, key: str, body: dict[str, Any]) -> httpx.Response:
    return await app.client.post(f"/v1/workflows/{key}/cancel", json=body, headers=app.auth)


async def test_cancel_by_key_stops_waiting_runs(ready: Harness) -> None:
    app = ready
    # Long enough for the cancellation to come before the delay's end on a busy machine.
    await put_workflow(
        app,
        "later",
        {"id": "wait", "type": "delay", "duration": "3s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    kept = await trigger(app, "later", ["r1", "r2"], cancellation_key="order-1")
    other = await trigger(app, "later", ["r1"], cancellation_key="order-2")
    await until_status(app, kept, "r2", "waiting")
    answer = await _cancel_by_key(
        app, "later", {"cancellation_key": "order-1", "recipient_ids": ["r1"]}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"cancelled": 1}
    assert (await _cancel_by_key(app, "later", {"cancellation_key": "nope"})).json() == {
        "cancelled": 0
    }
    await until_status(app, kept, "r2", "completed")
    await until_status(app, other, "r1", "completed")
    await app.drain()
    by_rid = await runs(app, kept)
    assert by_rid["r1"]["status"] == "cancelled"
    note = await app.notification(kept)
    # The delay, shorter than CLARION_WORKFLOW_WAKE_AHEAD, was walked ahead at once: r1's
    # email was made, scheduled for the delay's end, and the cancellation reached it.
    assert channels_of(note, "r1") == {"email": "cancelled"}
    assert channels_of(note, "r2") == {"email": "sent"}
    assert channels_of(await app.notification(other), "r1") == {"email": "sent"}
    # Cancelling again: nothing left to cancel.
    again = await _cancel_by_key(app, "later", {"cancellation_key": "order-1"})
    assert again.json() == {"cancelled": 0}


async def test_cancel_reaches_queued_deliveries_of_a_run(ready: Harness) -> None:
    """A run at a channel step whose delivery waits (quiet hours): cancelling by key
    cancels the delivery too, and nothing is sent."""
    app = ready
    await app.put_recipient("r4", email="r4@example.com", timezone="UTC")
    quiet = {"quiet_hours": {"start": "00:00", "end": "23:59"}}
    response = await app.client.put("/v1/recipients/r4/preferences", json=quiet, headers=app.auth)
    assert response.status_code == 200, response.text
    await put_workflow(
        app,
        "mail",
        {"id": "mail", "type": "channel", "channels": ["email"], "mode": "first_success",
         "template": "comment"},
    )  # fmt: skip
    nid = await trigger(app, "mail", ["r4"], cancellation_key="k")
    await until_status(app, nid, "r4", "waiting")
    assert channels_of(await app.notification(nid), "r4") == {"email": "scheduled"}
    answer = await _cancel_by_key(app, "mail", {"cancellation_key": "k"})
    assert answer.json() == {"cancelled": 1}
    note = await app.notification(nid)
    assert channels_of(note, "r4") == {"email": "cancelled"}
    assert (await runs(app, nid))["r4"]["status"] == "cancelled"


async def test_deleting_the_notification_cancels_its_runs(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "slow",
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    nid = await trigger(app, "slow", ["r1", "r2"])
    await until_status(app, nid, "r2", "waiting")
    await app.drain()  # the in-app messages sent: nothing in flight (`cancelling`)
    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code == 202, response.text
    note = response.json()
    assert note["status"] == "cancelled"
    assert note["run_totals"] == {"cancelled": 2}
    assert all(run["waiting_until"] is None for run in note["runs"])


async def test_workflow_sends_are_checked_at_the_edge(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app, "ok", {"id": "mail", "type": "channel", "channel": "email", "template": "comment"}
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"workflow": "missing", "to": {"recipient_id": "r1"}}, "unknown_workflow"),
        ({"workflow": "ok", "template": "comment", "to": {"recipient_id": "r1"}},
         "validation_error"),
        ({"to": {"recipient_id": "r1"}}, "validation_error"),
        ({"template": "comment", "cancellation_key": "k", "to": {"recipient_id": "r1"}},
         "validation_error"),
        ({"workflow": "ok", "channels": ["sms"], "to": {"recipient_id": "r1"}},
         "validation_error"),
        ({"workflow": "ok", "cancellation_key": "", "to": {"recipient_id": "r1"}},
         "validation_error"),
        ({"workflow": "ok", "to": {"recipient_id": "nobody"}}, "unknown_recipient"),
    ]  # fmt: skip
    for body, code in cases:
        response = await app.send(body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == code, (body, response.text)
    batch = await app.client.post(
        "/v1/notifications/batch",
        json={"notifications": [
            {"workflow": "ok", "to": {"recipient_id": "r1"}},
            {"workflow": "missing", "to": {"recipient_id": "r1"}},
        ]},
        headers=app.auth,
    )  # fmt: skip
    results = batch.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1]["error"]["code"] == "unknown_workflow"
    bad_cancel = await _cancel_by_key(app, "ok", {"recipient_ids": ["r1"]})
    assert bad_cancel.status_code == 422
    other = await app.new_tenant("other")
    foreign = await app.client.get(
        f"/v1/notifications/{results[0]['id']}/runs", headers={"Authorization": f"Bearer {other}"}
    )
    assert foreign.status_code == 404


async def test_runs_resume_after_a_restart_of_the_waker(ready: Harness) -> None:
    """A waiting run is a stored row: a planner that never saw it wakes it when due."""
    app = ready
    await put_workflow(
        app,
        "durable",
        {"id": "wait", "type": "delay", "duration": "1s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    nid = await trigger(app, "durable", ["r1"])
    await until_status(app, nid, "r1", "waiting")
    from clarion.pipeline.planner import Planner

    fresh = Planner(app.ctx, "another-planner")
    await asyncio.sleep(1.2)  # the delay's own length: it is what is being waited for
    assert await fresh.runs.wake_once() in (0, 1)
    await until_status(app, nid, "r1", "completed")
    await app.drain()
    assert channels_of(await app.notification(nid), "r1") == {"email": "sent"}


async def test_a_run_that_goes_straight_into_a_wait_is_stored_waiting(ready: Harness) -> None:
    """A run whose first steps plan nothing (a condition skips a step, then a delay) is
    walked before it is stored and stored already waiting, never leased (turn 0, its wake
    time the delay's end); one whose first step plans a delivery is stored leased for that
    first advance, then saved where it stands (turn 1)."""
    app = ready
    skipped = {"id": "skipped", "type": "channel", "channel": "sms", "template": "comment"}
    wait = {"id": "wait", "type": "delay", "duration": "1h"}
    mail = {"id": "mail", "type": "channel", "channel": "email", "template": "comment"}
    await put_workflow(app, "quiet", {**skipped, "if": "data.urgent"}, wait, mail)
    await put_workflow(app, "loud", mail, wait, mail | {"id": "again"})
    before = utcnow()
    quiet = await trigger(app, "quiet", ["r1"])
    loud = await trigger(app, "loud", ["r2"])
    await until_status(app, quiet, "r1", "waiting")
    await until_status(app, loud, "r2", "waiting")
    r = workflow_runs
    async with app.ctx.engine.connect() as conn:
        rows = (await conn.execute(select(r.c.recipient_id, r.c.turn, r.c.wake_at))).all()
    stored = {rid: (turn, wake_at) for rid, turn, wake_at in rows}
    assert (stored["r1"][0], stored["r2"][0]) == (0, 1)
    for _, wake_at in stored.values():
        assert timedelta(minutes=59) < wake_at.replace(tzinfo=before.tzinfo) - before
    steps = {rid: [s["id"] for s in run["steps"]] for rid, run in (await runs(app, quiet)).items()}
    assert steps == {"r1": ["skipped", "wait"]}
    await app.drain()
    assert channels_of(await app.notification(loud), "r2") == {"email": "sent"}


async def test_a_topic_send_runs_for_every_subscriber(ready: Harness) -> None:
    app = ready
    ids = [f"s{i}" for i in range(30)]
    for rid in ids:
        await app.put_recipient(rid, email=f"{rid}@example.com")
    await app.subscribe("posts", ids)
    await put_workflow(
        app,
        "digestless",
        {"id": "wait", "type": "delay", "duration": "1s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    body = {"workflow": "digestless", "to": {"topic": "posts"}, "data": {"who": "Sam"}}
    sent = await app.send(body)
    assert sent.status_code == 202, sent.text
    nid = sent.json()["id"]

    async def all_done() -> bool:
        note = await app.notification(nid)
        return note["run_totals"] == {"completed": 30}

    await app.until(all_done)
    await app.drain()
    note = await app.notification(nid)
    assert note["totals"] == {"sent": 30}
    assert note["status"] == "completed"


async def test_throttle_ends_runs_over_the_limit(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "capped",
        {"id": "cap", "type": "throttle", "limit": 2, "window": "1h", "key": "data.thread"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    sends = []
    for thread in ("a", "a", "a", "b"):
        response = await app.send(
            {"workflow": "capped", "to": {"recipient_id": "r1"},
             "data": {"who": "Sam", "thread": thread}}
        )  # fmt: skip
        assert response.status_code == 202, response.text
        sends.append(response.json()["id"])
        await app.drain()
    statuses = [(await runs(app, nid))["r1"]["status"] for nid in sends]
    assert statuses == ["completed", "completed", "throttled", "completed"]
    throttled = (await runs(app, sends[2]))["r1"]
    assert [(s["id"], s["status"]) for s in throttled["steps"]] == [("cap", "throttled")]
    assert channels_of(await app.notification(sends[2]), "r1") == {}
    assert channels_of(await app.notification(sends[3]), "r1") == {"email": "sent"}


async def test_a_workflow_on_paper(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "nudge",
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
        {"id": "wait", "type": "delay", "duration": "15m"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment",
         "if": "not steps.feed.read"},
        {"id": "stop", "type": "exit", "if": "recipient.locale == 'fr'"},
        {"id": "alert", "type": "channel", "channels": ["push", "sms"],
         "mode": "first_success", "template": "comment", "if": "data.urgent"},
    )  # fmt: skip

    async def test(body: dict[str, Any]) -> dict[str, Any]:
        response = await app.client.post("/v1/workflows/nudge/test", json=body, headers=app.auth)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    unread = await test({"recipient_id": "r1", "data": {"who": "Sam", "urgent": True}})
    assert unread["ends"] == "completed"
    assert [(s["id"], s["status"]) for s in unread["steps"]] == [
        ("feed", "sent"), ("wait", "completed"), ("mail", "sent"), ("stop", "skipped"),
        ("alert", "sent"),
    ]  # fmt: skip
    assert unread["steps"][1]["wait_seconds"] == 900
    assert unread["steps"][2]["content"]["email"]["subject"] == "New comment"
    assert unread["steps"][4]["content"]["sms"]["text"] == "Sam commented"
    read = await test(
        {"recipient": {"locale": "fr"}, "data": {"who": "Sam"}, "assume": {"steps.feed.read": True}}
    )
    assert [(s["id"], s["status"]) for s in read["steps"]] == [
        ("feed", "sent"), ("wait", "completed"), ("mail", "skipped"), ("stop", "exited"),
    ]  # fmt: skip
    missing = await test({"recipient_id": "r1"})
    assert "error" in missing["steps"][0]["content"]["inapp"]
    # Nothing was stored or sent.
    listed = await app.client.get("/v1/notifications", headers=app.auth)
    assert listed.json()["data"] == []
    for body, status in [
        ({"assume": {"steps.nope.read": True}}, 422),
        ({"assume": {"steps.feed.read": "yes"}}, 422),
        ({"assume": {"data.x": True}}, 422),
        ({"recipient_id": "ghost"}, 404),
        ({"recipient_id": "r1", "recipient": {}}, 422),
        ({"version": 9}, 404),
    ]:
        response = await app.client.post("/v1/workflows/nudge/test", json=body, headers=app.auth)
        assert response.status_code == status, (body, response.text)
    gone = await app.client.post("/v1/workflows/none/test", json={}, headers=app.auth)
    assert gone.status_code == 404


async def test_ended_runs_leave_with_retention_and_a_recipients_runs_with_erasure(
    ready: Harness,
) -> None:
    app = ready
    mail = {"id": "mail", "type": "channel", "channel": "email", "template": "comment"}
    await put_workflow(app, "now", mail)
    await put_workflow(app, "later", {"id": "wait", "type": "delay", "duration": "1h"}, mail)
    done = await trigger(app, "now", ["r1"])
    waiting = await trigger(app, "later", ["r1", "r2"])
    await until_status(app, done, "r1", "completed")
    await until_status(app, waiting, "r2", "waiting")
    report = await retention.maintain(app.ctx.engine, utcnow() + timedelta(days=40), days=30)
    assert report.deleted.get("workflow_runs") == 1
    async with app.ctx.engine.connect() as conn:
        left = (await conn.execute(select(workflow_runs.c.recipient_id))).scalars().all()
    assert sorted(left) == ["r1", "r2"]  # the waiting ones
    # A recipient's export lists their runs, as the API shows them.
    export = await app.client.get("/v1/recipients/r2/export", headers=app.auth)
    assert export.status_code == 200, export.text
    [run] = export.json()["workflow_runs"]
    assert (run["notification_id"], run["workflow"], run["status"]) == (waiting, "later", "waiting")
    assert run["step"] == "wait"
    assert run["waiting_until"] is not None
    assert [step["id"] for step in run["steps"]] == ["wait"]
    erased = await app.client.delete("/v1/recipients/r2", headers=app.auth)
    assert erased.status_code == 204, erased.text
    async with app.ctx.engine.connect() as conn:
        left = (await conn.execute(select(workflow_runs.c.recipient_id))).scalars().all()
    assert left == ["r1"]


async def test_preferences_per_workflow(ready: Harness) -> None:
    app = ready
    prefs = {"channels": {"email": False}, "workflows": {"digest": {"email": True, "sms": False}}}
    response = await app.client.put("/v1/recipients/r1/preferences", json=prefs, headers=app.auth)
    assert response.status_code == 200, response.text
    got = await app.client.get("/v1/recipients/r1/preferences", headers=app.auth)
    assert got.json()["workflows"] == {"digest": {"email": True, "sms": False}}
    both = {"id": "both", "type": "channel", "channels": ["email", "sms"], "mode": "all",
            "template": "comment"}  # fmt: skip
    await put_workflow(app, "digest", both)
    await put_workflow(app, "other", both)
    mine = await trigger(app, "digest", ["r1"])
    theirs = await trigger(app, "other", ["r1"])
    await until_status(app, mine, "r1", "completed")
    await until_status(app, theirs, "r1", "completed")
    await app.drain()
    # The workflow's own setting wins over the channel-wide opt-out, and adds its own.
    assert channels_of(await app.notification(mine), "r1") == {
        "email": "sent",
        "sms": "suppressed",
    }
    assert channels_of(await app.notification(theirs), "r1") == {
        "email": "suppressed",
        "sms": "sent",
    }


async def test_a_delay_is_walked_ahead_and_its_step_goes_out_when_it_ends(
    ready: Harness,
) -> None:
    """A delay followed by steps that rest on nothing that can still change is passed
    ahead of its end (CLARION_WORKFLOW_WAKE_AHEAD, 30 s by default): the next step's
    delivery is made at once, scheduled for the delay's end, and the run waits until
    then; the delivery is not sent before the end, and the run completes at it."""
    app = ready
    await put_workflow(
        app,
        "soon",
        {"id": "wait", "type": "delay", "duration": "2s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
    )
    nid = await trigger(app, "soon", ["r1"])
    run = await until_status(app, nid, "r1", "waiting")
    wait = run["steps"][0]
    assert wait["id"] == "wait"
    # The run shows the delay's end, not the earlier moment it was woken at.
    assert run["waiting_until"] == wait["until"]
    note = await app.notification(nid)
    [mail] = [d for d in note["deliveries"] if d["recipient_id"] == "r1"]
    assert (mail["channel"], mail["status"], mail["reason"]) == ("email", "scheduled", "delay")
    assert mail["scheduled_for"] == wait["until"]
    done = await until_status(app, nid, "r1", "completed")
    await app.drain()
    [mail] = [d for d in (await app.notification(nid))["deliveries"] if d["recipient_id"] == "r1"]
    assert mail["status"] == "sent"
    assert mail["sent_at"] >= wait["until"]
    # Walked at the delay's end: the step started then.
    assert done["steps"][1]["started_at"] == wait["until"]


async def test_a_delay_before_a_step_that_reads_a_step_is_not_walked_ahead(
    ready: Harness,
) -> None:
    """Whether the in-app message was read is known only when the delay ends: a run whose
    next step's ``if`` reads a step is woken at the delay's end, not ahead of it."""
    app = ready
    await put_workflow(
        app,
        "unread",
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment",
         "if": "not steps.feed.read"},
    )  # fmt: skip
    nid = await trigger(app, "unread", ["r1"])
    run = await until_status(app, nid, "r1", "waiting")
    async with app.ctx.engine.connect() as conn:
        row = await conn.execute(select(workflow_runs).where(workflow_runs.c.id == run["id"]))
        stored = row.mappings().one()
    assert run["waiting_until"] == run["steps"][1]["until"]
    assert as_utc(stored["wake_at"]) == datetime.fromisoformat(run["steps"][1]["until"])


async def test_cancelling_a_run_walked_ahead_stops_its_scheduled_step(ready: Harness) -> None:
    """A run walked ahead of its delay's end has not finished: cancelling it by key, or
    its notification, before the end cancels the delivery scheduled for it."""
    app = ready
    await put_workflow(
        app,
        "remind",
        {"id": "wait", "type": "delay", "duration": "20s"},
        {"id": "mail", "type": "channel", "channel": "email", "template": "comment"},
        {"id": "done", "type": "exit", "if": "data.who"},
    )
    keyed = await trigger(app, "remind", ["r1"], cancellation_key="cart-1")
    deleted = await trigger(app, "remind", ["r2"])
    for nid, rid in ((keyed, "r1"), (deleted, "r2")):
        await until_status(app, nid, rid, "waiting")
        assert channels_of(await app.notification(nid), rid) == {"email": "scheduled"}
    answer = await _cancel_by_key(app, "remind", {"cancellation_key": "cart-1"})
    assert answer.json() == {"cancelled": 1}
    response = await app.client.delete(f"/v1/notifications/{deleted}", headers=app.auth)
    assert response.status_code == 202, response.text
    for nid, rid in ((keyed, "r1"), (deleted, "r2")):
        note = await app.notification(nid)
        assert channels_of(note, rid) == {"email": "cancelled"}
        assert (await runs(app, nid))[rid]["status"] == "cancelled"
