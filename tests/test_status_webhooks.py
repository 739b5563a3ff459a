"""Tenant status webhooks: ``/v1/webhooks``, the events the pipeline emits, their dispatch."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from clarion.pipeline.status_events import EVENTS_RETRY_STREAM, EVENTS_STREAM
from clarion.security.secrets import Keyring
from clarion.security.signing import verify
from clarion.store import webhooks as webhook_store
from clarion.store.tables import webhooks as webhooks_table
from harness import Harness, make_settings, running
from standins.twilio import TwilioStandin
from webhook_sink import Received, WebhookSink

SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
HOOK_SECRET = "s3cret-s3cret-s3cret"
PUBLIC_URL = "https://notify.example.com"

TEMPLATE = {
    "channels": {
        "webhook": {"body": {"x": "1"}},
        "email": {"subject": "Hi", "text": "Hello {{ firstName }}"},
    }
}


@pytest.fixture
async def clarion(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Every role on each backend, with a secret key to seal webhook secrets with."""
    settings = make_settings(*backend, secret_key=SECRET_KEY, public_url=PUBLIC_URL)
    async with running(settings) as harness:
        yield harness


async def put_hook(
    app: Harness, name: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await app.client.put(f"/v1/webhooks/{name}", json=body, headers=headers or app.auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def events_at(sink: WebhookSink, path: str = "/events") -> list[Received]:
    return [r for r in sink.received if r.path == path]


async def send_mixed(app: Harness, sink: WebhookSink) -> str:
    """A notification to "a" (webhook and email: both sent) and "b" (email with a missing
    variable: failed by the planner; no webhook URL: suppressed)."""
    await app.put_recipient(
        "a", email="a@example.com", webhook_url=f"{sink.url}/a", data={"firstName": "A"}
    )
    await app.put_recipient("b", email="b@example.com")
    await app.put_template("mixed", TEMPLATE)
    response = await app.send({"template": "mixed", "to": {"recipient_ids": ["a", "b"]}})
    assert response.status_code == 202, response.text
    await app.drain()
    nid: str = response.json()["id"]
    return nid


async def test_sent_and_failed_events_reach_the_tenant_signed(
    clarion: Harness, sink: WebhookSink
) -> None:
    hook = {
        "url": f"{sink.url}/events",
        "events": ["delivery.sent", "delivery.failed"],
        "secret": HOOK_SECRET,
    }
    created = await put_hook(clarion, "main", hook)
    assert created["secret"] == "***"
    nid = await send_mixed(clarion, sink)

    received = events_at(sink)
    events = [json.loads(r.body) for r in received]
    by_key = {(e["data"]["recipient_id"], e["data"]["channel"]): e for e in events}
    # The suppressed webhook channel of "b" is filtered out by the subscription.
    assert sorted(by_key) == [("a", "email"), ("a", "webhook"), ("b", "email")]
    assert by_key["a", "webhook"]["type"] == "delivery.sent"
    assert by_key["a", "email"]["type"] == "delivery.sent"
    failed = by_key["b", "email"]
    assert failed["type"] == "delivery.failed"
    assert failed["data"]["reason"] == "render_error"
    assert failed["data"]["last_error"]

    sent = by_key["a", "email"]
    assert sent["id"].startswith("evt_")
    assert sent["created_at"].endswith("Z")
    data = sent["data"]
    assert data["notification_id"] == nid
    assert data["provider"] == "sandbox"
    assert data["provider_message_id"]
    assert data["status"] == "sent"
    assert data["attempts"] == 1
    assert data["sent_at"].endswith("Z")
    assert set(data) == {
        "delivery_id",
        "notification_id",
        "recipient_id",
        "channel",
        "provider",
        "provider_message_id",
        "status",
        "reason",
        "attempts",
        "last_error",
        "scheduled_for",
        "sent_at",
    }
    note = await clarion.notification(nid)
    ids = {(d["recipient_id"], d["channel"]): d["id"] for d in note["deliveries"]}
    assert all(e["data"]["delivery_id"] == ids[key] for key, e in by_key.items())

    for request, event in zip(received, events, strict=True):
        assert request.headers["content-type"] == "application/json"
        assert verify(HOOK_SECRET, request.body, request.headers["clarion-signature"])
        assert not verify("x" * 20, request.body, request.headers["clarion-signature"])
        assert request.headers["clarion-event-id"] == event["id"]
        assert request.headers["idempotency-key"] == f"{event['id']}:main"


async def test_every_matching_webhook_gets_its_own_signed_copy(
    clarion: Harness, sink: WebhookSink
) -> None:
    await put_hook(clarion, "all", {"url": f"{sink.url}/all", "events": ["*"]})
    made = await put_hook(
        clarion,
        "failures",
        {"url": f"{sink.url}/failures", "events": ["delivery.failed"], "secret": HOOK_SECRET},
    )
    assert made["secret"] == "***"
    await send_mixed(clarion, sink)
    everything = [json.loads(r.body)["type"] for r in events_at(sink, "/all")]
    assert sorted(everything) == [
        "delivery.failed",
        "delivery.sent",
        "delivery.sent",
        "delivery.suppressed",
    ]
    [failure] = events_at(sink, "/failures")
    assert json.loads(failure.body)["type"] == "delivery.failed"
    assert verify(HOOK_SECRET, failure.body, failure.headers["clarion-signature"])


async def test_a_tenant_without_webhooks_publishes_no_events(
    clarion: Harness, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams: list[str] = []
    publish = clarion.ctx.broker.publish

    async def spy(stream: str, payloads: Any) -> None:
        streams.append(stream)
        await publish(stream, payloads)

    monkeypatch.setattr(clarion.ctx.broker, "publish", spy)
    await send_mixed(clarion, sink)
    assert EVENTS_STREAM not in streams
    assert any(s.startswith("send.") for s in streams)
    assert events_at(sink) == []

    # Another tenant's webhook does not make this tenant's events.
    other = await clarion.new_tenant("other")
    await put_hook(
        clarion,
        "main",
        {"url": f"{sink.url}/events", "events": ["*"]},
        headers={"Authorization": f"Bearer {other}"},
    )
    response = await clarion.send({"template": "mixed", "to": {"recipient_ids": ["a", "b"]}})
    assert response.status_code == 202
    await clarion.drain()
    assert EVENTS_STREAM not in streams
    assert events_at(sink) == []


async def test_a_failing_endpoint_is_retried(clarion: Harness, sink: WebhookSink) -> None:
    answers = iter([500, 429])
    sink.respond = lambda r: next(answers, 200) if r.path == "/events" else 200
    await put_hook(
        clarion,
        "main",
        {"url": f"{sink.url}/events", "events": ["delivery.failed"], "secret": HOOK_SECRET},
    )
    await clarion.put_recipient("b", email="b@example.com")
    await clarion.put_template("mixed", TEMPLATE)
    response = await clarion.send({"template": "mixed", "to": {"recipient_id": "b"}})
    assert response.status_code == 202
    await clarion.drain()

    tries = events_at(sink)
    assert len(tries) == 3
    assert len({r.body for r in tries}) == 1  # the same event each time
    keys = {r.headers["idempotency-key"] for r in tries}
    assert len(keys) == 1
    assert all(verify(HOOK_SECRET, r.body, r.headers["clarion-signature"]) for r in tries)


@pytest.mark.parametrize(("status", "tries"), [(400, 1), (503, 3)])
async def test_refusals_are_dropped_and_retries_end(
    lite: Harness, sink: WebhookSink, status: int, tries: int
) -> None:
    sink.respond = lambda r: status if r.path == "/events" else 200
    await put_hook(lite, "main", {"url": f"{sink.url}/events", "events": ["*"]})
    await lite.put_recipient("b")
    await lite.put_template("mixed", TEMPLATE)
    response = await lite.send({"template": "mixed", "to": {"recipient_id": "b"}})
    assert response.status_code == 202
    await lite.drain()
    # Two suppressed deliveries (no address); max_attempts is 3 in the tests.
    assert len(events_at(sink)) == 2 * tries
    assert {EVENTS_STREAM, EVENTS_RETRY_STREAM} <= set(lite.runtime.streams())


async def test_a_provider_report_makes_an_event(lite: Harness, sink: WebhookSink) -> None:
    twilio = TwilioStandin()
    await twilio.start()
    try:
        body = {"channel": "sms", "kind": "twilio", "config": twilio.config()}
        response = await lite.client.put("/v1/providers/sms-main", json=body, headers=lite.auth)
        assert response.status_code == 200, response.text
        await lite.ctx.providers.prepare([lite.tenant_id])
        await put_hook(
            lite, "main", {"url": f"{sink.url}/events", "events": ["delivery.delivered"]}
        )
        await lite.put_recipient("u-1", phone="+14155550100")
        await lite.put_template("t", {"channels": {"sms": {"text": "Hello"}}})
        response = await lite.send({"template": "t", "to": {"recipient_id": "u-1"}})
        await lite.drain()
        assert events_at(sink) == []  # sent is not subscribed
        [received] = twilio.received
        assert (await twilio.report(lite.client, received, "delivered")).status_code == 204
        await lite.drain()
    finally:
        await twilio.close()
    [request] = events_at(sink)
    event = json.loads(request.body)
    assert event["type"] == "delivery.delivered"
    assert event["data"]["status"] == "delivered"
    assert event["data"]["provider"] == "sms-main"
    assert event["data"]["provider_message_id"] == received.sid


# -- the API --------------------------------------------------------------------------------


async def test_secret_made_when_absent_shown_once_and_sealed(lite: Harness) -> None:
    made = await put_hook(lite, "main", {"url": "https://example.com/hooks", "events": ["*"]})
    secret = made["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 16
    assert made["enabled"] is True
    assert made["events"] == ["*"]
    assert made["created_at"].endswith("Z")

    shown = (await lite.client.get("/v1/webhooks/main", headers=lite.auth)).json()
    assert shown["secret"] == "***"
    assert shown["url"] == "https://example.com/hooks"

    # Changed without a secret, or with "***": the stored one is kept.
    again = await put_hook(
        lite, "main", {"url": "https://example.com/v2", "events": ["delivery.sent"]}
    )
    assert again["secret"] == "***"
    await put_hook(
        lite,
        "main",
        {"url": "https://example.com/v2", "events": ["delivery.sent"], "secret": "***"},
    )
    async with lite.ctx.engine.connect() as conn:
        [stored] = (await conn.execute(select(webhooks_table))).mappings().all()
    assert secret not in json.dumps(dict(stored), default=str)
    assert stored["secret"].startswith("v1:")
    await lite.ctx.webhooks.prepare([lite.tenant_id])
    [subscription] = lite.ctx.webhooks.matching(lite.tenant_id, "delivery.sent")
    assert subscription.secret == secret
    assert subscription.url == "https://example.com/v2"

    # A new secret replaces it.
    await put_hook(
        lite, "main", {"url": "https://example.com/v2", "events": ["*"], "secret": HOOK_SECRET}
    )
    await lite.ctx.webhooks.prepare([lite.tenant_id])
    [subscription] = lite.ctx.webhooks.matching(lite.tenant_id, "delivery.dead")
    assert subscription.secret == HOOK_SECRET


async def test_disabled_webhooks_get_nothing(lite: Harness, sink: WebhookSink) -> None:
    await put_hook(lite, "main", {"url": f"{sink.url}/events", "events": ["*"], "enabled": False})
    await lite.put_recipient("b")
    await lite.put_template("mixed", TEMPLATE)
    await lite.send({"template": "mixed", "to": {"recipient_id": "b"}})
    await lite.drain()
    assert events_at(sink) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["*"]}, "url"),
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "https://", "events": ["*"]}, "url"),
        ({"url": "https://example.com:port/", "events": ["*"]}, "url"),
        ({"url": "https://example.com/" + "x" * 2000, "events": ["*"]}, "url"),
        ({"url": "https://example.com", "events": []}, "events"),
        ({"url": "https://example.com", "events": "delivery.sent"}, "events"),
        ({"url": "https://example.com", "events": ["delivery.queued"]}, "events"),
        ({"url": "https://example.com", "events": [1]}, "events.0"),
        ({"url": "https://example.com"}, "events"),
        ({"url": "https://example.com", "events": ["*"], "secret": "short"}, "secret"),
        ({"url": "https://example.com", "events": ["*"], "secret": "x" * 201}, "secret"),
        ({"url": "https://example.com", "events": ["*"], "secret": 12345678901234567}, "secret"),
        ({"url": "https://example.com", "events": ["*"], "enabled": "maybe"}, "enabled"),
        ({"url": "https://example.com", "events": ["*"], "colour": "red"}, "colour"),
        ({"url": "https://example.com", "events": ["*"], "secret": "***"}, "secret"),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    lite: Harness, body: dict[str, Any], field: str
) -> None:
    response = await lite.client.put("/v1/webhooks/main", json=body, headers=lite.auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in [d["field"] for d in error["details"]], error
    assert (await lite.client.get("/v1/webhooks/main", headers=lite.auth)).status_code == 404


async def test_bad_requests(lite: Harness) -> None:
    good = {"url": "https://example.com", "events": ["*"]}
    bad_name = await lite.client.put("/v1/webhooks/a%20b", json=good, headers=lite.auth)
    assert bad_name.status_code == 422
    not_json = await lite.client.put(
        "/v1/webhooks/main", content=b"{", headers={**lite.auth, "content-type": "application/json"}
    )
    assert not_json.status_code == 400
    anonymous = await lite.client.put("/v1/webhooks/main", json=good)
    assert anonymous.status_code == 401
    reader = await lite.new_tenant("reader", ["read"])
    forbidden = await lite.client.get("/v1/webhooks", headers={"Authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403
    page = await lite.client.get("/v1/webhooks?limit=0", headers=lite.auth)
    assert page.status_code == 422


async def test_private_addresses_need_the_setting(strict: Harness) -> None:
    for url in ("http://example.com/hooks", "https://127.0.0.1/hooks", "https://[::1]/x"):
        response = await strict.client.put(
            "/v1/webhooks/main", json={"url": url, "events": ["*"]}, headers=strict.auth
        )
        assert response.status_code == 422, url
        assert response.json()["error"]["details"][0]["field"] == "url"
    await put_hook(strict, "main", {"url": "https://example.com/hooks", "events": ["*"]})


# Listing, reading, deleting and another tenant's 404: test_named_rows.py.


async def test_listed_secrets_are_masked_and_a_deleted_webhook_gets_nothing(
    lite: Harness,
) -> None:
    for name in ("c", "a", "b"):
        await put_hook(lite, name, {"url": f"https://example.com/{name}", "events": ["*"]})
    listed = (await lite.client.get("/v1/webhooks", headers=lite.auth)).json()
    assert [w["secret"] for w in listed["data"]] == ["***"] * 3
    assert (await lite.client.delete("/v1/webhooks/b", headers=lite.auth)).status_code == 204
    await lite.ctx.webhooks.prepare([lite.tenant_id])
    names = [s.name for s in lite.ctx.webhooks.matching(lite.tenant_id, "delivery.sent")]
    assert names == ["a", "c"]


async def test_another_tenants_webhook_of_the_same_name_is_another_one(lite: Harness) -> None:
    await put_hook(lite, "main", {"url": "https://example.com/hooks", "events": ["*"]})
    other = {"Authorization": f"Bearer {await lite.new_tenant('other')}"}
    made = await put_hook(lite, "main", {"url": "https://example.org/", "events": ["*"]}, other)
    assert made["secret"].startswith("whsec_")
    mine = (await lite.client.get("/v1/webhooks/main", headers=lite.auth)).json()
    assert mine["url"] == "https://example.com/hooks"


async def test_rotation_reseals_webhook_secrets(lite: Harness) -> None:
    await put_hook(
        lite, "main", {"url": "https://example.com/", "events": ["*"], "secret": HOOK_SECRET}
    )
    old = lite.ctx.keyring.current
    assert old is not None
    new = secrets.token_bytes(32)
    outcome = await webhook_store.rotate(lite.ctx.engine, Keyring(new, (old,)))
    assert (outcome.changed, outcome.unreadable) == (1, [])
    row = await webhook_store.get(lite.ctx.engine, lite.tenant_id, "main")
    assert row is not None
    assert row.open_secret(Keyring(new)) == HOOK_SECRET
    again = await webhook_store.rotate(lite.ctx.engine, Keyring(new, (old,)))
    assert again.changed == 0
    stranger = await webhook_store.rotate(lite.ctx.engine, Keyring(secrets.token_bytes(32)))
    assert stranger.unreadable == [(lite.tenant_id, "main")]
