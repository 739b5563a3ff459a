"""Preferences, quiet hours, categories and locales, applied by the planner end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from harness import Harness

TEMPLATE: dict[str, Any] = {
    "category": "marketing",
    "channels": {
        "email": {"subject": "Sale {{ pct }}%", "html": "<p>Hi {{ firstName }}</p>"},
        "sms": {"text": "Sale {{ pct }}%"},
        "inapp": {"title": "Sale", "body": "{{ pct }}% off"},
    },
    "locales": {
        "fr": {"email": {"subject": "Soldes {{ pct }} %"}, "sms": {"text": "Soldes"}},
    },
}


async def _recipient(app: Harness, rid: str, **fields: Any) -> None:
    await app.put_recipient(
        rid, email=f"{rid}@example.com", phone="+14155550100", data={"firstName": rid}, **fields
    )


async def _preferences(app: Harness, rid: str, body: dict[str, Any]) -> None:
    response = await app.client.put(
        f"/v1/recipients/{rid}/preferences", json=body, headers=app.auth
    )
    assert response.status_code == 200, response.text


async def _send(app: Harness, rid: str, **extra: Any) -> dict[str, dict[str, Any]]:
    response = await app.send(
        {"template": "sale", "to": {"recipient_id": rid}, "data": {"pct": 20}, **extra}
    )
    assert response.status_code == 202, response.text
    await app.drain()
    note = await app.notification(response.json()["id"])
    return {d["channel"]: d for d in note["deliveries"]}


def _window_around_now(zone: str) -> tuple[dict[str, str], datetime]:
    """Quiet hours that hold now in ``zone``, and the UTC instant they end."""
    local = datetime.now(ZoneInfo(zone)).replace(second=0, microsecond=0)
    start, end = local - timedelta(hours=1), local + timedelta(hours=2)
    quiet = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": zone}
    return quiet, end.astimezone(UTC)


async def test_opted_out_of_marketing_email_is_suppressed_with_the_reason(app: Harness) -> None:
    await app.put_template("sale", TEMPLATE)
    await _recipient(app, "u1")
    await _preferences(app, "u1", {"categories": {"marketing": {"email": False}}})

    deliveries = await _send(app, "u1")

    assert deliveries["email"]["status"] == "suppressed"
    assert deliveries["email"]["reason"] == "opted_out"
    assert deliveries["sms"]["status"] == "sent"
    assert deliveries["inapp"]["status"] == "sent"
    captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()["data"]
    assert {m["channel"] for m in captured} == {"sms"}


async def test_a_category_setting_wins_over_the_channel_wide_one(lite: Harness) -> None:
    await lite.put_template("sale", TEMPLATE)
    await _recipient(lite, "u1")
    await _preferences(
        lite, "u1", {"channels": {"sms": False}, "categories": {"marketing": {"sms": True}}}
    )

    deliveries = await _send(lite, "u1")

    assert deliveries["sms"]["status"] == "sent"


async def test_quiet_hours_defer_to_the_end_of_the_window(app: Harness) -> None:
    await app.put_template("sale", TEMPLATE)
    await _recipient(app, "u1", timezone="Europe/Paris")
    quiet, ends = _window_around_now("Europe/Paris")
    await _preferences(app, "u1", {"quiet_hours": quiet})

    deliveries = await _send(app, "u1")

    for channel in ("email", "sms"):
        assert deliveries[channel]["status"] == "scheduled"
        assert deliveries[channel]["reason"] == "deferred"
        assert deliveries[channel]["scheduled_for"] == ends.strftime("%Y-%m-%dT%H:%M:%SZ")
    # The in-app inbox interrupts no one: it goes now.
    assert deliveries["inapp"]["status"] == "sent"
    # The deferred deliveries wait on the broker's delayed set, not in a lane.
    waiting = await app.ctx.broker.backlog(["send.email.normal", "send.sms.normal"])
    assert waiting == {"send.email.normal": 1, "send.sms.normal": 1}


async def test_a_critical_category_ignores_quiet_hours_and_opt_outs(app: Harness) -> None:
    await app.put_template("alert", {**TEMPLATE, "category": "security"})
    await _recipient(app, "u1", timezone="Europe/Paris")
    quiet, _ = _window_around_now("Europe/Paris")
    await _preferences(app, "u1", {"channels": {"email": False}, "quiet_hours": quiet})

    response = await app.send(
        {"template": "alert", "to": {"recipient_id": "u1"}, "data": {"pct": 1}}
    )
    await app.drain()
    note = await app.notification(response.json()["id"])

    assert {d["status"] for d in note["deliveries"]} == {"sent"}


async def test_critical_priority_ignores_quiet_hours(lite: Harness) -> None:
    await lite.put_template("sale", TEMPLATE)
    await _recipient(lite, "u1", timezone="Europe/Paris")
    quiet, _ = _window_around_now("Europe/Paris")
    await _preferences(lite, "u1", {"quiet_hours": quiet})

    deliveries = await _send(lite, "u1", priority="critical")

    assert {d["status"] for d in deliveries.values()} == {"sent"}


async def test_a_tenant_category_made_critical_takes_effect_at_once(lite: Harness) -> None:
    await lite.put_template("sale", TEMPLATE)
    await _recipient(lite, "u1")
    await _preferences(lite, "u1", {"channels": {"email": False}})
    assert (await _send(lite, "u1"))["email"]["status"] == "suppressed"

    response = await lite.client.put(
        "/v1/categories/marketing", json={"critical": True}, headers=lite.auth
    )
    assert response.status_code == 200, response.text

    assert (await _send(lite, "u1"))["email"]["status"] == "sent"


async def test_default_channels_of_a_category_narrow_the_template(lite: Harness) -> None:
    response = await lite.client.put(
        "/v1/categories/news", json={"default_channels": ["inapp"]}, headers=lite.auth
    )
    assert response.status_code == 200, response.text
    await lite.put_template("sale", {**TEMPLATE, "category": "news"})
    await _recipient(lite, "u1")

    assert set(await _send(lite, "u1")) == {"inapp"}
    # Channels named by the notification win over the category's defaults.
    assert set(await _send(lite, "u1", channels=["sms"])) == {"sms"}


async def test_the_recipients_locale_chooses_the_content(app: Harness) -> None:
    await app.put_template("sale", TEMPLATE)
    await _recipient(app, "fr", locale="fr")
    await _recipient(app, "ca", locale="fr-CA")
    await _recipient(app, "de", locale="de")

    for rid in ("fr", "ca", "de"):
        await _send(app, rid)

    captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()["data"]
    subjects = {
        m["recipient_id"]: m["content"]["subject"] for m in captured if m["channel"] == "email"
    }
    assert subjects == {"fr": "Soldes 20 %", "ca": "Soldes 20 %", "de": "Sale 20%"}
    # Email without a text part gets one made from its HTML.
    texts = {m["content"]["text"] for m in captured if m["channel"] == "email"}
    assert texts == {"Hi fr", "Hi ca", "Hi de"}


async def test_max_per_hour_suppresses_the_excess_as_rate_limited(app: Harness) -> None:
    response = await app.client.put(
        "/v1/categories/digest", json={"max_per_hour": 2}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    await app.put_template("sale", {**TEMPLATE, "category": "digest"})
    await _recipient(app, "u1")
    await _recipient(app, "u2")

    first = [await _send(app, "u1") for _ in range(3)]
    other = await _send(app, "u2")
    urgent = await _send(app, "u1", priority="critical")

    statuses = [{d["status"] for d in deliveries.values()} for deliveries in first]
    # A notification counts once per recipient, whatever its channels.
    assert statuses == [{"sent"}, {"sent"}, {"suppressed"}]
    assert {d["reason"] for d in first[2].values()} == {"rate_limited"}
    assert {d["status"] for d in other.values()} == {"sent"}
    assert {d["status"] for d in urgent.values()} == {"sent"}
