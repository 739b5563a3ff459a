"""SendGrid's signed event webhook: bounces, drops and spam reports suppress addresses (the
next email is not sent to the stand-in), blocked messages only count, forgeries refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.domain.feedback import FeedbackKind
from clarion.providers.sendgrid_events import event_feedback
from clarion.store import tenants as tenant_store
from harness import Harness, make_settings, running
from standins import serving
from standins.sendgrid import SendgridStandIn
from test_suppressions import (
    PUBLIC,
    SECRET_KEY,
    assert_suppressed,
    prepare,
    send_email,
    suppressions,
)

URL = "/v1/providers/sg-main/feedback?tenant={tenant}"


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendgridStandIn]:
    async with serving(SendgridStandIn()) as server:
        yield server


@pytest.fixture
async def clarion(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    async with running(make_settings(*backend, public_url=PUBLIC, secret_key=SECRET_KEY)) as app:
        yield app


async def configure_sendgrid(app: Harness, sendgrid: SendgridStandIn, **config: Any) -> None:
    settings = {
        "api_key": "SG.standin",
        "from": "Acme <no-reply@acme.test>",
        "base_url": sendgrid.url,
        "webhook_public_key": sendgrid.verification_key,
        **config,
    }
    body = {"channel": "email", "kind": "sendgrid", "config": settings}
    response = await app.client.put("/v1/providers/sg-main", json=body, headers=app.auth)
    assert response.status_code in (200, 201), response.text


def event(name: str, email: str = "alex@example.com", **fields: Any) -> dict[str, Any]:
    return {
        "email": email,
        "timestamp": int(time.time()),
        "event": name,
        "sg_event_id": "ZmFrZQ",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"event": "bounce", "type": "bounce", "status": "5.1.1"}, FeedbackKind.HARD_BOUNCE),
        ({"event": "bounce"}, FeedbackKind.HARD_BOUNCE),
        ({"event": "bounce", "type": "blocked"}, FeedbackKind.SOFT_BOUNCE),
        ({"event": "spamreport"}, FeedbackKind.COMPLAINT),
        ({"event": "dropped", "reason": "Bounced Address"}, FeedbackKind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Invalid"}, FeedbackKind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Spam Reporting Address"}, FeedbackKind.COMPLAINT),
        ({"event": "dropped", "reason": "Unsubscribed Address"}, FeedbackKind.SOFT_BOUNCE),
        ({"event": "delivered"}, None),
        ({"event": "open"}, None),
    ],
)
def test_what_each_event_means(fields: dict[str, Any], kind: FeedbackKind | None) -> None:
    found = event_feedback({"email": "a@example.com", **fields})
    assert (found.kind if found else None) == kind


async def test_a_bounce_suppresses_the_address(clarion: Harness, sendgrid: SendgridStandIn) -> None:
    await configure_sendgrid(clarion, sendgrid)
    await prepare(clarion)
    first = await send_email(clarion)
    assert first["status"] == "sent", first
    [body] = sendgrid.sent
    delivery_id = body["custom_args"]["clarion_delivery_id"]
    assert delivery_id == first["id"]

    batch = [
        event("processed", clarion_delivery_id=delivery_id),
        event(
            "bounce",
            "Alex@Example.com",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            clarion_delivery_id=delivery_id,
        ),
        event("bounce", "busy@example.com", type="blocked", reason="451 try again later"),
    ]
    url = URL.format(tenant=clarion.tenant_id)
    response = await sendgrid.post_events(clarion.client, url, batch)
    assert response.status_code == 204, response.text
    [entry] = await suppressions(clarion)
    assert (entry["email"], entry["reason"], entry["source"]) == (
        "alex@example.com",
        "bounced",
        "sendgrid",
    )
    assert entry["delivery_id"] == delivery_id
    bounced = await clarion.client.get(f"/v1/deliveries/{delivery_id}", headers=clarion.auth)
    assert (bounced.json()["status"], bounced.json()["reason"]) == ("failed", "bounced")

    second = await send_email(clarion)
    await assert_suppressed(clarion, second, "bounced")
    assert len(sendgrid.sent) == 1

    gone = await clarion.client.delete("/v1/suppressions/alex@example.com", headers=clarion.auth)
    assert gone.status_code == 204
    assert (await send_email(clarion))["status"] == "sent"
    assert len(sendgrid.sent) == 2


async def test_spam_reports_and_drops(lite: Harness, sendgrid: SendgridStandIn) -> None:
    await configure_sendgrid(lite, sendgrid)
    batch = [
        event("spamreport", "a@example.com"),
        event("dropped", "b@example.com", reason="Bounced Address"),
        event("dropped", "c@example.com", reason="Unsubscribed Address"),
    ]
    response = await sendgrid.post_events(lite.client, URL.format(tenant=lite.tenant_id), batch)
    assert response.status_code == 204
    found = {s["email"]: s["reason"] for s in await suppressions(lite)}
    assert found == {"a@example.com": "complained", "b@example.com": "bounced"}
    metrics = (await lite.client.get("/metrics")).text
    assert 'clarion_suppressions_added_total{reason="complained",source="sendgrid"}' in metrics


async def test_forged_events_are_refused_and_record_nothing(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    await configure_sendgrid(lite, sendgrid)
    url = URL.format(tenant=lite.tenant_id)
    batch = [event("bounce", type="bounce")]
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    for what, kwargs in {
        "another key": {"key": other},
        "a stale timestamp": {"timestamp": now - 2 * 3600},
        "a timestamp from the future": {"timestamp": now + 3600},
    }.items():
        response = await sendgrid.post_events(lite.client, url, batch, **kwargs)
        assert response.status_code == 403, (what, response.text)
        assert response.json()["error"]["code"] == "invalid_signature"
    body = b'[{"email": "alex@example.com", "event": "bounce"}]'
    headers = sendgrid.sign_events(body)
    tampered = body.replace(b"alex", b"bob!")
    for content, extra in (
        (tampered, headers),  # signed for another body
        (body, {}),  # unsigned
        (body, {**headers, "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}),
        (body, {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": "yesterday"}),
    ):
        response = await lite.client.post(
            url, content=content, headers={"content-type": "application/json", **extra}
        )
        assert response.status_code == 403, extra
    assert await suppressions(lite) == []


async def test_a_provider_without_a_verification_key_takes_no_events(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    await configure_sendgrid(lite, sendgrid, webhook_public_key=None)
    response = await sendgrid.post_events(
        lite.client, URL.format(tenant=lite.tenant_id), [event("bounce")]
    )
    assert response.status_code == 403
    assert await suppressions(lite) == []


async def test_a_bad_verification_key_is_refused_when_stored(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    rsa_der = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
    for key in ("not a key", rsa_der, "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"):
        config = {
            "api_key": "SG.standin",
            "from": "no-reply@acme.test",
            "base_url": sendgrid.url,
            "webhook_public_key": key,
        }
        body = {"channel": "email", "kind": "sendgrid", "config": config}
        response = await lite.client.put("/v1/providers/sg-main", json=body, headers=lite.auth)
        assert response.status_code == 422, key


async def test_events_signed_for_one_tenant_do_not_reach_another(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    await configure_sendgrid(lite, sendgrid)
    other_key = await lite.new_tenant("globex")
    other = {"Authorization": f"Bearer {other_key}"}
    theirs = SendgridStandIn()  # the other tenant's SendGrid account: its own key
    body = {
        "channel": "email",
        "kind": "sendgrid",
        "config": {
            "api_key": "SG.standin",
            "from": "no-reply@acme.test",
            "base_url": sendgrid.url,
            "webhook_public_key": theirs.verification_key,
        },
    }
    response = await lite.client.put("/v1/providers/sg-main", json=body, headers=other)
    assert response.status_code in (200, 201)
    other_tenant = await _tenant_of(lite, other_key)
    # Events signed with the first tenant's key, sent to the other tenant's URL.
    url = URL.format(tenant=other_tenant)
    response = await sendgrid.post_events(lite.client, url, [event("bounce")])
    assert response.status_code == 403
    assert await suppressions(lite, auth=other) == []
    assert await suppressions(lite) == []


async def _tenant_of(app: Harness, key: str) -> str:
    grant = await tenant_store.find_key(app.ctx.engine, key)
    assert grant is not None
    return grant.tenant_id
