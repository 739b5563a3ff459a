"""Caps per recipient and category (``max_per_day``, the overflow policy) and recipient
snooze, applied by the planner end to end, on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.store import digests as digest_store
from clarion.store.db import utcnow
from digest_kit import close_after
from harness import Harness, make_settings, running

TEMPLATE: dict[str, Any] = {
    "category": "updates",
    "channels": {
        "email": {
            "subject": "Update {{ what }}",
            "text": "{{ what }}",
            "digest": {"subject": "{{ count }} updates", "text": "..."},
        },
        "inapp": {"title": "Update", "body": "{{ what }}"},
    },
}


async def _setup(app: Harness, category: dict[str, Any]) -> None:
    response = await app.client.put("/v1/categories/updates", json=category, headers=app.auth)
    assert response.status_code == 200, response.text
    await app.put_template("news", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com")


async def _send(app: Harness, what: str, **extra: Any) -> dict[str, dict[str, Any]]:
    body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"what": what}, **extra}
    response = await app.send(body)
    assert response.status_code == 202, response.text
    await app.drain()
    note = await app.notification(response.json()["id"])
    return {d["channel"]: d for d in note["deliveries"]}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _snooze(app: Harness, until: str | None, rid: str = "u1") -> httpx.Response:
    return await app.client.put(
        f"/v1/recipients/{rid}/preferences", json={"snooze_until": until}, headers=app.auth
    )


async def test_max_per_day_drop(app: Harness) -> None:
    await _setup(app, {"max_per_day": 2})
    sent = [await _send(app, f"n{n}") for n in range(3)]
    assert [s["email"]["status"] for s in sent] == ["sent", "sent", "suppressed"]
    assert sent[2]["email"]["reason"] == "rate_limited"
    # A notification counts once whatever its channels: both of the third are dropped.
    assert sent[2]["inapp"]["reason"] == "rate_limited"
    # Critical ones are never capped.
    critical = await _send(app, "c", priority="critical")
    assert critical["email"]["status"] == "sent"


async def test_max_per_day_defer_schedules_for_the_next_free_slot(app: Harness) -> None:
    await _setup(app, {"max_per_day": 2, "overflow": "defer"})
    before = utcnow()
    sent = [await _send(app, f"n{n}") for n in range(4)]
    assert [s["email"]["status"] for s in sent] == ["sent", "sent", "scheduled", "scheduled"]
    third, fourth = sent[2]["email"], sent[3]["email"]
    assert third["reason"] == "rate_limited"
    # The bucket refills 2 a day: the next slots are 12 h and 24 h away.
    slot = timedelta(hours=12)
    assert abs(_at(third["scheduled_for"]) - (before + slot)) < timedelta(minutes=1)
    assert abs(_at(fourth["scheduled_for"]) - (before + 2 * slot)) < timedelta(minutes=1)
    assert sent[3]["inapp"]["scheduled_for"] == fourth["scheduled_for"]


async def test_max_per_day_overflow_digest_holds_what_is_over(app: Harness) -> None:
    await _setup(app, {"max_per_day": 1, "overflow": "digest", "digest": {"window": "1h"}})
    # Under the cap a notification goes at once: the digest is for what is over it.
    first, second, third = [await _send(app, what) for what in ("a", "b", "c")]
    assert {d["status"] for d in first.values()} == {"sent"}
    for over in (second, third):
        assert (over["email"]["status"], over["email"]["reason"]) == ("suppressed", "digest")
        # No digest content for in-app: what is over the cap there is dropped.
        assert (over["inapp"]["status"], over["inapp"]["reason"]) == ("suppressed", "rate_limited")
    [window] = await digest_store.open_windows(app.ctx.engine, app.tenant_id, "u1")
    assert window["items"] == 2
    assert await close_after(app, timedelta(hours=2)) == 1
    response = await app.client.get(
        "/v1/sandbox/messages", params={"channel": "email"}, headers=app.auth
    )
    subjects = [m["content"]["subject"] for m in response.json()["data"]]
    assert sorted(subjects) == ["2 updates", "Update a"]


async def test_overflow_digest_needs_a_digest_and_a_cap(lite: Harness) -> None:
    for body in (
        {"overflow": "digest", "max_per_day": 3},
        {"overflow": "digest", "digest": {"window": "1h"}},
    ):
        response = await lite.client.put("/v1/categories/updates", json=body, headers=lite.auth)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"


async def test_snooze_defers_then_releases(app: Harness) -> None:
    await _setup(app, {})
    until = (utcnow() + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    response = await _snooze(app, until)
    assert response.status_code == 200, response.text
    assert _at(response.json()["snooze_until"]) == _at(until)
    got = await app.client.get("/v1/recipients/u1/preferences", headers=app.auth)
    assert _at(got.json()["snooze_until"]) == _at(until)

    body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"what": "later"}}
    nid = (await app.send(body)).json()["id"]

    async def planned() -> bool:
        return len((await app.notification(nid))["deliveries"]) == 2

    await app.until(planned)
    waiting = {d["channel"]: d for d in (await app.notification(nid))["deliveries"]}
    for delivery in waiting.values():
        assert (delivery["status"], delivery["reason"]) == ("scheduled", "snoozed")
        assert abs(_at(delivery["scheduled_for"]) - _at(until)) < timedelta(milliseconds=1)
    # The delayed set hands them to their lanes when the snooze ends; drain waits for it.
    await app.drain()
    released = (await app.notification(nid))["deliveries"]
    assert {d["status"] for d in released} == {"sent"}
    # The snooze has ended by itself: what comes now goes at once.
    assert {d["status"] for d in (await _send(app, "now")).values()} == {"sent"}


async def test_snooze_drop_and_critical_bypass(app: Harness) -> None:
    await _setup(app, {"during_snooze": "drop"})
    until = (utcnow() + timedelta(hours=2)).isoformat()
    assert (await _snooze(app, until)).status_code == 200
    dropped = await _send(app, "x")
    assert {(d["status"], d["reason"]) for d in dropped.values()} == {("suppressed", "snoozed")}
    critical = await _send(app, "y", priority="critical")
    assert {d["status"] for d in critical.values()} == {"sent"}
    # Cleared with null: sends go again.
    cleared = await _snooze(app, None)
    assert cleared.json()["snooze_until"] is None
    assert {d["status"] for d in (await _send(app, "z")).values()} == {"sent"}


async def test_snooze_with_defer_is_the_default(lite: Harness) -> None:
    await _setup(lite, {})
    until = (utcnow() + timedelta(days=1)).isoformat()
    assert (await _snooze(lite, until)).status_code == 200
    deferred = await _send(lite, "x")
    assert {(d["status"], d["reason"]) for d in deferred.values()} == {("scheduled", "snoozed")}


@pytest.mark.parametrize(
    "body",
    [
        {"snooze_until": "tomorrow"},
        {"snooze_until": "2026-11-24T08:00:00"},  # no time zone
        {"snooze_until": 1764000000.5},
        {"snooze_until": "10000-01-01T00:00:00Z"},
    ],
)
async def test_bad_snooze_is_refused(lite: Harness, body: dict[str, Any]) -> None:
    await lite.put_recipient("u1")
    response = await lite.client.put("/v1/recipients/u1/preferences", json=body, headers=lite.auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "snooze_until" in {d["field"] for d in error["details"]}


async def test_another_tenants_recipient_cannot_be_snoozed(lite: Harness) -> None:
    await lite.put_recipient("u1")
    other = await lite.new_tenant("globex")
    response = await lite.client.put(
        "/v1/recipients/u1/preferences",
        json={"snooze_until": "2030-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


async def test_over_a_cap_the_first_accepted_go(backend: tuple[str, str]) -> None:
    """Notifications over a cap planned in one batch: the first accepted are the ones sent,
    whatever order the store reads them back in."""
    async with running(make_settings(*backend), Roles(api=True)) as app:
        await _setup(app, {"max_per_day": 3})
        ids = []
        for n in range(8):
            body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"what": f"n{n}"}}
            response = await app.send(body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        planner = Planner(app.ctx, "planner")
        while await planner.run_once(timeout=0.2):
            pass
        statuses = []
        for nid in ids:
            deliveries = (await app.notification(nid))["deliveries"]
            statuses.append({d["status"] for d in deliveries})
    assert statuses == [{"queued"}] * 3 + [{"suppressed"}] * 5
