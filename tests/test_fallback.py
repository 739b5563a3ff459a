"""The fallback channel of critical notifications, used when a channel has no healthy provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion.resilience.breaker import BreakerKey
from harness import Harness, make_settings, running

TEMPLATE: dict[str, Any] = {
    "category": "security",
    "channels": {
        "push": {"title": "Sign-in", "body": "New sign-in for {{ firstName }}"},
        "sms": {"text": "New sign-in for {{ firstName }}"},
    },
    "fallbacks": {"push": "sms"},
}


@pytest.fixture(params=["sqlite+embedded", "postgres+redis"])
async def clarion(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "sqlite+embedded":
        urls = (request.getfixturevalue("migrated_sqlite_url"), "embedded://")
    else:
        urls = (
            request.getfixturevalue("migrated_postgres_url"),
            request.getfixturevalue("redis_url"),
        )
    # Breakers open after a few failures and stay open for the whole test.
    settings = make_settings(
        *urls, breaker_min_calls=3, breaker_cooldown=600.0, secret_key="A" * 43 + "="
    )
    async with running(settings) as harness:
        yield harness


async def _setup(app: Harness, template: dict[str, Any]) -> None:
    response = await app.client.put(
        "/v1/providers/push-main",
        json={"channel": "push", "kind": "sandbox", "config": {}},
        headers=app.auth,
    )
    assert response.status_code == 200, response.text
    await app.put_template("signin", template)
    await app.put_recipient(
        "u1",
        phone="+14155550100",
        push_tokens=[{"platform": "fcm", "token": "tok-1"}],
        data={"firstName": "Alex"},
    )


async def _open_breaker(app: Harness, provider: str) -> None:
    key = BreakerKey(app.tenant_id, provider)
    for _ in range(3):
        await app.ctx.resilience.breakers.record(key, False)
    assert (await app.ctx.resilience.breakers.status(key)).state == "open"


async def _deliveries(app: Harness, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = await app.send(body)
    assert response.status_code == 202, response.text
    await app.drain()
    note = await app.notification(response.json()["id"])
    return {d["channel"]: d for d in note["deliveries"]}


async def test_a_critical_push_with_no_healthy_provider_goes_by_sms(clarion: Harness) -> None:
    await _setup(clarion, TEMPLATE)
    await _open_breaker(clarion, "push-main")

    deliveries = await _deliveries(
        clarion, {"template": "signin", "to": {"recipient_id": "u1"}, "channels": ["push"]}
    )

    assert deliveries["push"]["status"] == "failed"
    assert deliveries["push"]["reason"] == "no_healthy_provider"
    assert deliveries["push"]["attempts"] == 0
    assert deliveries["sms"]["status"] == "sent"
    captured = (await clarion.client.get("/v1/sandbox/messages", headers=clarion.auth)).json()
    [sms] = captured["data"]
    assert sms["channel"] == "sms"
    assert sms["to"] == "+14155550100"
    assert sms["content"] == {"text": "New sign-in for Alex"}


async def test_a_non_critical_delivery_waits_instead(lite: Harness) -> None:
    await _setup(lite, {**TEMPLATE, "category": "transactional"})
    key = BreakerKey(lite.tenant_id, "push-main")
    for _ in range(20):
        await lite.ctx.resilience.breakers.record(key, False)

    response = await lite.send(
        {"template": "signin", "to": {"recipient_id": "u1"}, "channels": ["push"]}
    )
    assert response.status_code == 202
    nid = response.json()["id"]

    async def waiting() -> bool:
        deliveries = (await lite.notification(nid))["deliveries"]
        return any(d["reason"] == "no_healthy_provider" for d in deliveries)

    await lite.until(waiting)
    [push] = (await lite.notification(nid))["deliveries"]
    assert push["status"] == "queued"
    assert push["attempts"] == 0
    # Its timeline: waiting, with the reason, and no attempt.
    detail = await lite.client.get(f"/v1/deliveries/{push['id']}", headers=lite.auth)
    events = detail.json()["events"]
    assert "attempt" not in [e["type"] for e in events]
    waits = [e for e in events if e["type"] == "retry_scheduled"]
    assert waits
    assert {(e["reason"], e["error"]) for e in waits} == {("no_healthy_provider", None)}


async def test_fallbacks_must_name_the_templates_channels(lite: Harness) -> None:
    for fallbacks in ({"push": "email"}, {"push": "push"}, {"email": "sms"}):
        response = await lite.client.put(
            "/v1/templates/bad", json={**TEMPLATE, "fallbacks": fallbacks}, headers=lite.auth
        )
        assert response.status_code == 422, fallbacks
        assert response.json()["error"]["code"] == "validation_error"
    response = await lite.client.put(
        "/v1/templates/bad", json={**TEMPLATE, "fallbacks": {"push": "pigeon"}}, headers=lite.auth
    )
    assert response.status_code == 422
