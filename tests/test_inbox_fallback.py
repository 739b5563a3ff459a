"""Offline fallback: an in-app message still unseen after ``fallback_after`` sends the
notification on ``fallback_channel`` (through preferences and quiet hours); seen in time,
nothing more is sent. The fallback is a step of the send's run, the built-in workflow of
its template: the run waits stored, shows in the notification, and is cancelled with it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from clarion.store.db import utcnow
from clarion.store.tables import inbox_messages, workflow_runs
from harness import Harness
from inbox_kit import bearer, feed, token_for

TEMPLATE = {
    "channels": {
        "inapp": {
            "title": "Order {{ n }}",
            "body": "It shipped",
            "fallback_after": "15m",
            "fallback_channel": "email",
        },
        "email": {"subject": "Unread: order {{ n }}", "text": "It shipped"},
    }
}


EMAIL = TEMPLATE["channels"]["email"]


def _template(after: str) -> dict[str, Any]:
    inapp = {**TEMPLATE["channels"]["inapp"], "fallback_after": after}
    return {"channels": {**TEMPLATE["channels"], "inapp": inapp}}


async def _emails(app: Harness) -> list[dict[str, Any]]:
    response = await app.client.get("/v1/sandbox/messages?channel=email", headers=app.auth)
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _send(app: Harness, rids: list[str], template: str = "shipped") -> str:
    response = await app.send(
        {
            "template": template,
            "to": {"recipient_ids": rids},
            "data": {"n": 7},
            "channels": ["inapp"],
        }
    )
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def _time_passes(app: Harness, nid: str) -> None:
    """The fallback's wait is over (its time moved instead of waited for)."""
    r = workflow_runs
    past = utcnow() - timedelta(seconds=1)
    async with app.ctx.engine.begin() as conn:
        rows = (
            await conn.execute(select(r.c.id, r.c.steps).where(r.c.notification_id == nid))
        ).all()
        for run_id, steps in rows:
            moved = [{**s, "until": past.timestamp()} if "until" in s else s for s in steps]
            await conn.execute(
                update(r)
                .where(r.c.id == run_id, r.c.wake_at.is_not(None))
                .values(steps=moved, wake_at=past)
            )


async def _runs_ended(app: Harness, nid: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    async def ended() -> bool:
        note = await app.notification(nid)
        found.update({run["recipient_id"]: run for run in note.get("runs") or []})
        return bool(found) and all(
            r["status"] not in ("running", "waiting") for r in found.values()
        )

    await app.until(ended)
    return found


async def test_unseen_falls_back_and_seen_does_not(app: Harness) -> None:
    await app.put_template("shipped", TEMPLATE)
    for rid in ("away", "here"):
        await app.put_recipient(rid, email=f"{rid}@example.com")
    nid = await _send(app, ["away", "here"])
    await app.drain()
    assert await _emails(app) == []
    note = await app.notification(nid)
    assert note["status"] == "processing"  # the fallback may still go out
    assert note["run_totals"] == {"waiting": 2}
    waiting = {run["recipient_id"]: run for run in note["runs"]}
    assert waiting["away"]["workflow"] == "~template"
    assert waiting["away"]["step"] == "wait"
    assert [s["id"] for s in waiting["away"]["steps"]] == ["send", "wait"]
    here = await token_for(app, "here")
    [message] = (await feed(app, here))["data"]
    assert "fallback_after" not in message
    assert "fallback_channel" not in message
    assert (
        await app.client.post(f"/v1/inbox/{message['id']}/seen", headers=bearer(here))
    ).is_success

    await _time_passes(app, nid)
    await _runs_ended(app, nid)
    await app.drain()
    runs = {run["recipient_id"]: run for run in (await app.notification(nid))["runs"]}
    [email] = await _emails(app)
    assert email["recipient_id"] == "away"
    assert email["content"]["subject"] == "Unread: order 7"
    assert runs["away"]["status"] == runs["here"]["status"] == "completed"
    away = {s["id"]: s for s in runs["away"]["steps"]}
    assert away["fallback"]["status"] in ("sent", "delivered")
    # A step of the same send, not a notification of its own.
    [fallback] = away["fallback"]["delivery_ids"]
    emails = [d for d in (await app.notification(nid))["deliveries"] if d["channel"] == "email"]
    assert [d["id"] for d in emails] == [fallback]
    assert {s["id"]: s["status"] for s in runs["here"]["steps"]}["fallback"] == "skipped"
    assert (await app.notification(nid))["status"] == "completed"
    # Once only: the run has ended, whatever wakes later.
    await app.drain()
    assert len(await _emails(app)) == 1


async def test_the_fallback_waits_on_a_real_timer(app: Harness) -> None:
    await app.put_template("quick", _template("1s"))
    await app.put_recipient("away", email="away@example.com")
    nid = await _send(app, ["away"], "quick")
    runs = await _runs_ended(app, nid)
    await app.drain()
    assert [e["recipient_id"] for e in await _emails(app)] == ["away"]
    steps = {s["id"]: s for s in runs["away"]["steps"]}
    assert steps["wait"]["status"] == "completed"
    assert steps["fallback"]["delivery_ids"]


async def test_cancelling_the_send_cancels_its_fallback(app: Harness) -> None:
    await app.put_template("shipped", TEMPLATE)
    await app.put_recipient("away", email="away@example.com")
    nid = await _send(app, ["away"])
    await app.drain()
    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code == 202, response.text
    assert response.json()["run_totals"] == {"cancelled": 1}
    await _time_passes(app, nid)
    await app.drain()
    await app.ctx.inbox.upkeep()
    await app.drain()
    assert await _emails(app) == []


async def test_a_template_without_a_fallback_stores_no_run(app: Harness) -> None:
    plain = {"channels": {"inapp": {"title": "t", "body": "b"}, "email": EMAIL}}
    await app.put_template("plain", plain)
    await app.put_recipient("away", email="away@example.com")
    nid = await _send(app, ["away"], "plain")
    await app.drain()
    note = await app.notification(nid)
    assert note["status"] == "completed"
    assert "runs" not in note
    assert "run_totals" not in note
    async with app.ctx.engine.connect() as conn:
        count = (await conn.execute(select(workflow_runs.c.id))).all()
    assert count == []


async def test_opted_out_of_in_app_there_is_no_fallback(app: Harness) -> None:
    await app.put_template("shipped", TEMPLATE)
    await app.put_recipient("muted", email="muted@example.com")
    prefs = {"channels": {"inapp": False}}
    response = await app.client.put(
        "/v1/recipients/muted/preferences", json=prefs, headers=app.auth
    )
    assert response.status_code == 200, response.text
    nid = await _send(app, ["muted"])
    await app.drain()
    note = await app.notification(nid)
    assert "runs" not in note
    assert [d["status"] for d in note["deliveries"]] == ["suppressed"]


async def test_a_topic_send_falls_back_per_subscriber(app: Harness) -> None:
    await app.put_template("shipped", TEMPLATE)
    rids = [f"s{i}" for i in range(5)]
    for rid in rids:
        await app.put_recipient(rid, email=f"{rid}@example.com")
    await app.subscribe("watchers", rids)
    response = await app.send(
        {
            "template": "shipped",
            "to": {"topic": "watchers"},
            "data": {"n": 1},
            "channels": ["inapp"],
        }
    )
    assert response.status_code == 202, response.text
    nid = response.json()["id"]
    await app.drain()

    async def all_waiting() -> bool:
        return (await app.notification(nid)).get("run_totals") == {"waiting": 5}

    await app.until(all_waiting)
    await _time_passes(app, nid)
    await _runs_ended(app, nid)
    await app.drain()
    assert sorted(e["recipient_id"] for e in await _emails(app)) == rids


async def test_a_message_stored_with_a_fallback_of_its_own_still_falls_back(app: Harness) -> None:
    """Messages stored by versions that kept the fallback on the message: the inbox upkeep
    sends theirs."""
    plain = {"channels": {"inapp": {"title": "t", "body": "b"}, "email": EMAIL}}
    await app.put_template("plain", plain)
    await app.put_recipient("away", email="away@example.com")
    await _send(app, ["away"], "plain")
    await app.drain()
    t = inbox_messages
    async with app.ctx.engine.begin() as conn:
        await conn.execute(update(t).values(fallback_due=t.c.created_at, fallback_channel="email"))
    await app.ctx.inbox.upkeep()
    await app.drain()
    [email] = await _emails(app)
    assert email["recipient_id"] == "away"
    await app.ctx.inbox.upkeep()
    await app.drain()
    assert len(await _emails(app)) == 1


BAD_FALLBACKS: list[dict[str, Any]] = [
    {"fallback_after": "15m"},
    {"fallback_channel": "email"},
    {"fallback_after": "soon", "fallback_channel": "email"},
    {"fallback_after": "8d", "fallback_channel": "email"},
    {"fallback_after": "15m", "fallback_channel": "sms"},
    {"fallback_after": "15m", "fallback_channel": "inapp"},
    {"fallback_after": 900, "fallback_channel": "email"},
]


async def test_a_bad_fallback_is_refused_when_stored(lite: Harness) -> None:
    for inapp in BAD_FALLBACKS:
        body = {
            "channels": {
                "inapp": {"title": "t", **inapp},
                "email": {"subject": "s", "text": "t"},
            }
        }
        response = await lite.client.put("/v1/templates/bad", json=body, headers=lite.auth)
        assert response.status_code == 422, (inapp, response.text)
