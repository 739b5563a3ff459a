"""Offline fallback: an in-app message still unseen after ``fallback_after`` sends the
notification again on ``fallback_channel`` (as a notification of its own, through
preferences and quiet hours); seen in time, nothing more is sent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from clarion.store.tables import inbox_messages
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


async def _emails(app: Harness) -> list[dict[str, Any]]:
    response = await app.client.get("/v1/sandbox/messages?channel=email", headers=app.auth)
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_unseen_falls_back_and_seen_does_not(app: Harness) -> None:
    await app.put_template("shipped", TEMPLATE)
    for rid in ("away", "here"):
        await app.put_recipient(rid, email=f"{rid}@example.com")
    response = await app.send(
        {
            "template": "shipped",
            "to": {"recipient_ids": ["away", "here"]},
            "data": {"n": 7},
            "channels": ["inapp"],
        }
    )
    assert response.status_code == 202, response.text
    await app.drain()
    assert await _emails(app) == []
    here = await token_for(app, "here")
    [message] = (await feed(app, here))["data"]
    assert "fallback_after" not in message
    assert (
        await app.client.post(f"/v1/inbox/{message['id']}/seen", headers=bearer(here))
    ).is_success
    # The fallback time comes (moved instead of waited for): the API's upkeep acts on it.
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(inbox_messages)
            .where(inbox_messages.c.fallback_due.is_not(None))
            .values(fallback_due=inbox_messages.c.created_at)
        )
    # (The API's own upkeep loop may take it first: both submit one notification at most.)
    await app.ctx.inbox.upkeep()
    await app.drain()
    [email] = await _emails(app)
    assert email["recipient_id"] == "away"
    assert email["content"]["subject"] == "Unread: order 7"
    # Once only.
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
