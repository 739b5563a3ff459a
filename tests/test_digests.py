"""Digests: a category's notifications held per (recipient, channel, key), one message per
window when it closes (its carrier run woken by the run engine, the window's time moved
rather than waited for), on both backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from clarion.domain.digests import MAX_ITEMS
from clarion.pipeline.planner import Planner
from clarion.store import digests as digest_store
from clarion.store.db import utcnow
from clarion.store.tables import digest_items, digest_windows, workflow_runs
from digest_kit import carrier_id, close_after, digests_made, time_passes
from harness import Harness

DIGEST_EMAIL = {
    "subject": "{{ count }} updates",
    "text": "{% for item in items %}{{ item.what }};{% endfor %}",
}
TEMPLATE: dict[str, Any] = {
    "category": "updates",
    "channels": {
        "email": {"subject": "Update {{ what }}", "text": "{{ what }}", "digest": DIGEST_EMAIL},
        "sms": {"text": "Update {{ what }}"},
    },
    "locales": {"fr": {"email": {"digest": {"subject": "{{ count }} nouvelles", "text": "-"}}}},
}
HOUR = timedelta(hours=1)


async def _category(app: Harness, body: dict[str, Any], name: str = "updates") -> None:
    response = await app.client.put(f"/v1/categories/{name}", json=body, headers=app.auth)
    assert response.status_code == 200, response.text


async def _setup(app: Harness, digest: dict[str, Any] | None = None, **recipient: Any) -> None:
    await _category(app, {"digest": digest or {"window": "1h"}})
    await app.put_template("news", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com", phone="+14155550100", **recipient)


async def _send(app: Harness, data: dict[str, Any], **extra: Any) -> str:
    body = {"template": "news", "to": {"recipient_id": "u1"}, "data": data, **extra}
    response = await app.send(body)
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def _emails(app: Harness) -> list[dict[str, Any]]:
    response = await app.client.get(
        "/v1/sandbox/messages", params={"channel": "email"}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["data"]))  # oldest first


async def _closed(app: Harness) -> list[dict[str, Any]]:
    query = select(digest_windows).where(digest_windows.c.closed_at.is_not(None))
    async with app.ctx.engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def test_a_window_sends_one_digest_with_every_item_when_it_closes(app: Harness) -> None:
    await _setup(app)
    ids = [await _send(app, {"what": f"a{n}"}) for n in range(4)]
    await app.drain()

    for nid in ids:
        note = await app.notification(nid)
        by_channel = {d["channel"]: d for d in note["deliveries"]}
        # Held for the digest: the channel with digest content; the other goes as usual.
        assert (by_channel["email"]["status"], by_channel["email"]["reason"]) == (
            "suppressed",
            "digest",
        )
        assert by_channel["sms"]["status"] == "sent"
        assert note["status"] == "completed"
    assert await _emails(app) == []
    [window] = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    assert (window["channel"], window["category"], window["dkey"], window["items"]) == (
        "email",
        "updates",
        "",
        4,
    )

    assert await close_after(app, HOUR / 2) == 0  # not yet
    assert await close_after(app, HOUR / 2 + timedelta(seconds=1)) == 1
    [email] = await _emails(app)
    assert email["content"]["subject"] == "4 updates"
    assert email["content"]["text"] == "a0;a1;a2;a3;"
    # Later still, nothing more: exactly one digest.
    assert await close_after(app, HOUR) == 0
    assert len(await _emails(app)) == 1
    [closed] = await _closed(app)
    digest = await app.notification(closed["notification_id"])
    assert digest["status"] == "completed"
    assert [(d["channel"], d["status"]) for d in digest["deliveries"]] == [("email", "sent")]

    # What arrives after the closing opens a new window.
    await _send(app, {"what": "b0"})
    await app.drain()
    [again] = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    assert again["id"] != window["id"]
    assert again["items"] == 1


async def test_the_key_splits_digests_and_the_locale_applies(app: Harness) -> None:
    await _setup(app, {"window": "10m", "key": "project.id"}, locale="fr-CA")
    for what, project in (("x1", "p1"), ("y1", "p2"), ("x2", "p1"), ("z1", None)):
        await _send(app, {"what": what, "project": {"id": project}})
    await app.drain()
    windows = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    assert sorted((w["dkey"], w["items"]) for w in windows) == [("", 1), ("p1", 2), ("p2", 1)]

    assert await close_after(app, timedelta(minutes=11)) == 3
    subjects = sorted(m["content"]["subject"] for m in await _emails(app))
    assert subjects == ["1 nouvelles", "1 nouvelles", "2 nouvelles"]


async def test_critical_sends_bypass_the_digest(app: Harness) -> None:
    await _setup(app)
    nid = await _send(app, {"what": "now"}, priority="critical")
    await app.drain()
    note = await app.notification(nid)
    assert {d["status"] for d in note["deliveries"]} == {"sent"}
    assert await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1") == []
    [email] = await _emails(app)
    assert email["content"]["subject"] == "Update now"


async def test_a_template_without_digest_content_is_not_held(app: Harness) -> None:
    await _setup(app)
    plain = {"category": "updates", "channels": {"email": {"subject": "S", "text": "T"}}}
    await app.put_template("news", plain)
    nid = await _send(app, {"what": "w"})
    await app.drain()
    assert [d["status"] for d in (await app.notification(nid))["deliveries"]] == ["sent"]
    assert await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1") == []


async def test_cancelled_notifications_leave_the_digest_and_two_closers_close_once(
    app: Harness,
) -> None:
    await _setup(app)
    await _send(app, {"what": "kept"})
    gone = await _send(app, {"what": "gone"})
    await _send(app, {"what": "kept2"})
    await app.drain()
    response = await app.client.delete(f"/v1/notifications/{gone}", headers=app.auth)
    assert response.status_code == 202, response.text
    # Due: three more planners' run wakers look at once, beside Clarion's own.
    await time_passes(app, HOUR + timedelta(seconds=1))
    wakers = [Planner(app.ctx, f"closer-{n}").runs for n in range(3)]
    await asyncio.gather(*(runs.wake_once() for runs in wakers))
    await app.drain()
    assert await digests_made(app) == 1
    [email] = await _emails(app)
    assert (email["content"]["subject"], email["content"]["text"]) == ("2 updates", "kept;kept2;")


async def test_holding_twice_holds_once(app: Harness) -> None:
    """A plan replayed after a crash (between holding and storing its deliveries) holds
    the same deliveries again: nothing is added, before or after the window closed."""
    await _setup(app)
    nid = await _send(app, {"what": "once"})
    await app.drain()
    [window] = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    async with app.ctx.engine.connect() as conn:
        [item] = (await conn.execute(select(digest_items))).mappings().all()
    replay = digest_store.Held(
        app.tenant_id, "u1", "email", "updates", "", 3600, item["delivery_id"], nid
    )
    await digest_store.hold(app.ctx.engine, [replay], utcnow())
    assert await _count_items(app) == 1
    assert await close_after(app, 2 * HOUR) == 1
    await digest_store.hold(app.ctx.engine, [replay], utcnow())
    assert await _count_items(app) == 1
    assert await close_after(app, 4 * HOUR) == 0
    assert len(await _emails(app)) == 1
    assert window["items"] == 1


async def _count_items(app: Harness) -> int:
    async with app.ctx.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(digest_items))).scalar())


async def test_erasure_forgets_the_recipients_windows(lite: Harness) -> None:
    await _setup(lite)
    await _send(lite, {"what": "w"})
    await lite.drain()
    assert len(await digest_store.open_windows(lite.ctx.engine, lite.tenant_id, "u1")) == 1
    export = (await lite.client.get("/v1/recipients/u1/export", headers=lite.auth)).json()
    [held] = export["digests"]
    assert (held["channel"], held["category"], held["key"], held["held"]) == (
        "email",
        "updates",
        "",
        1,
    )
    assert held["closes_at"].endswith("Z")
    response = await lite.client.delete("/v1/recipients/u1", headers=lite.auth)
    assert response.status_code == 204
    assert await digest_store.open_windows(lite.ctx.engine, lite.tenant_id, "u1") == []
    assert await _count_items(lite) == 0


async def test_bad_digest_content_and_windows_are_refused(lite: Harness) -> None:
    await _category(lite, {"digest": {"window": "1h"}})
    bad = {"category": "updates", "channels": {"email": {"subject": "S", "digest": "text"}}}
    response = await lite.client.put("/v1/templates/t", json=bad, headers=lite.auth)
    _error(response, 422, "template_error")
    broken = {
        "category": "updates",
        "channels": {"email": {"subject": "S", "digest": {"subject": "{{ count"}}},
    }
    response = await lite.client.put("/v1/templates/t", json=broken, headers=lite.auth)
    _error(response, 422, "template_error")
    for digest in ({"window": "1 hour"}, {"window": "1h", "key": "a b"}, {"window": 3600}):
        response = await lite.client.put(
            "/v1/categories/updates", json={"digest": digest}, headers=lite.auth
        )
        _error(response, 422, "validation_error")


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


async def test_a_full_window_closes_at_once(lite: Harness) -> None:
    now = utcnow()
    items = [
        digest_store.Held(lite.tenant_id, "u1", "email", "updates", "", 3600, f"dlv_{n}", "ntf_x")
        for n in range(MAX_ITEMS - 1)
    ]
    await digest_store.hold(lite.ctx.engine, items, now)
    [window] = await digest_store.open_windows(lite.ctx.engine, lite.tenant_id, "u1")
    assert window["closes_at"] == now + HOUR
    last = digest_store.Held(lite.tenant_id, "u1", "email", "updates", "", 3600, "dlv_z", "ntf_x")
    later = now + timedelta(minutes=5)
    await digest_store.hold(lite.ctx.engine, [last], later)
    [window] = await digest_store.open_windows(lite.ctx.engine, lite.tenant_id, "u1")
    assert window["items"] == MAX_ITEMS
    assert window["closes_at"] == later


async def test_a_window_being_added_to_is_not_closed_under_the_planner(app: Harness) -> None:
    """PostgreSQL: a planner's hold locks its window until it commits; the window's carrier
    closing it meanwhile waits for the planner, and closes it with the new item."""
    if app.ctx.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns in one process")
    await _setup(app)
    await _send(app, {"what": "first"})
    await app.drain()
    nid = await _send(app, {"what": "second"})
    await app.drain()
    [window] = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    async with app.ctx.engine.begin() as conn:
        [item] = (
            await conn.execute(select(digest_items).where(digest_items.c.notification_id == nid))
        ).all()
        await conn.execute(digest_items.delete().where(digest_items.c.notification_id == nid))
        # The window is due; its carrier is not woken yet.
        past = utcnow() - timedelta(seconds=1)
        await conn.execute(update(digest_windows).values(closes_at=past))
    held = digest_store.Held(
        app.tenant_id, "u1", "email", "updates", "", 3600, item.delivery_id, nid
    )
    async with app.ctx.engine.begin() as planner:
        await digest_store.hold_in(planner, [held], utcnow())
        # The carrier due now: Clarion's run waker takes it, and its closing waits.
        async with app.ctx.engine.begin() as conn:
            carrier = carrier_id({"id": window["id"], "recipient_id": "u1"})
            await conn.execute(
                update(workflow_runs).where(workflow_runs.c.id == carrier).values(wake_at=past)
            )
        await app.until(lambda: _waiting_on_a_lock(app))
        assert await digests_made(app) == 0
    await app.drain()
    assert await digests_made(app) == 1
    [email] = await _emails(app)
    assert email["content"]["text"] == "first;second;"


async def _waiting_on_a_lock(app: Harness) -> bool:
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    async with app.ctx.engine.connect() as conn:
        return bool((await conn.execute(query)).scalar())


async def test_preview_renders_the_digest_content(lite: Harness) -> None:
    await _setup(lite)
    body = {"digest": True, "data": {"items": [{"what": "p"}, {"what": "q"}], "count": 2}}
    response = await lite.client.post("/v1/templates/news/preview", json=body, headers=lite.auth)
    assert response.status_code == 200, response.text
    assert response.json()["channels"] == {"email": {"subject": "2 updates", "text": "p;q;"}}
    french = await lite.client.post(
        "/v1/templates/news/preview", json={**body, "locale": "fr"}, headers=lite.auth
    )
    assert french.json()["channels"]["email"]["subject"] == "2 nouvelles"
    # Without digest content on the channel asked for: 422, as for a channel it lacks.
    sms = await lite.client.post(
        "/v1/templates/news/preview", json={**body, "channel": "sms"}, headers=lite.auth
    )
    _error(sms, 422, "unknown_channel")
    # The plain preview leaves the digest content out of the channel's own.
    plain = await lite.client.post(
        "/v1/templates/news/preview", json={"data": {"what": "w"}}, headers=lite.auth
    )
    assert plain.json()["channels"]["email"] == {"subject": "Update w", "text": "w"}
