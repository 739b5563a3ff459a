"""The whatsapp channel through Clarion: recipients' WhatsApp numbers and templates'
whatsapp parts checked at the edge, deliveries sent through stand-ins of Meta's Cloud API
and Twilio on both stores, and their signed status reports (delivered, read, failed)
recorded, forged ones refused."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from clarion.observability import metrics
from clarion.providers.whatsapp import webhook_url
from clarion.store import tenants as tenant_store
from harness import Harness, make_settings, running
from standins import serving
from standins.twilio import TwilioStandin
from standins.whatsapp import NOT_ON_WHATSAPP, WaMessage, WhatsappStandin, hub_signature

PUBLIC_URL = "https://notify.example.com"
SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
CONTENT_SID = "HX" + "5e" * 16

TEMPLATE = {
    "channels": {
        "whatsapp": {
            "template": "order_shipped",
            "language": "en_US",
            "header": {"type": "image", "link": "https://cdn.example.com/o/{{ orderId }}.png"},
            "body": ["{{ firstName }}", "{{ orderId }}"],
            "buttons": [{"index": 0, "url": "track/{{ orderId }}"}],
            "content_sid": CONTENT_SID,
            "text": "Order {{ orderId }} shipped",
        }
    },
    "locales": {"fr": {"whatsapp": {"language": "fr"}}},
}


@pytest.fixture
async def meta() -> AsyncIterator[WhatsappStandin]:
    async with serving(WhatsappStandin()) as server:
        yield server


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with serving(TwilioStandin()) as server:
        server.contents[CONTENT_SID] = 2
        yield server


@pytest.fixture
async def app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion on each store, with a key to seal the providers' secrets."""
    settings = make_settings(*backend, secret_key=SECRET_KEY, public_url=PUBLIC_URL)
    async with running(settings) as harness:
        yield harness


@pytest.fixture
async def lite(migrated_sqlite_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(
        migrated_sqlite_url, "embedded://", secret_key=SECRET_KEY, public_url=PUBLIC_URL
    )
    async with running(settings) as harness:
        yield harness


async def configure(app: Harness, name: str, kind: str, config: dict[str, Any]) -> None:
    body = {"channel": "whatsapp", "kind": kind, "config": config}
    response = await app.client.put(f"/v1/providers/{name}", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    await app.ctx.providers.prepare([app.tenant_id])


async def deliver(
    app: Harness, *recipients: str, template: dict[str, Any] = TEMPLATE
) -> list[dict[str, Any]]:
    """Send the template to the recipients; their deliveries once all is done."""
    await app.put_template("shipped", template)
    response = await app.send(
        {
            "template": "shipped",
            "to": {"recipient_ids": list(recipients)},
            "data": {"orderId": "A42", "firstName": "Alex"},
        }
    )
    assert response.status_code == 202, response.text
    await app.drain()
    deliveries: list[dict[str, Any]] = (await app.notification(response.json()["id"]))["deliveries"]
    return sorted(deliveries, key=lambda d: d["recipient_id"])


async def shown(app: Harness, delivery_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/deliveries/{delivery_id}", headers=app.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def events(delivery: dict[str, Any]) -> list[str]:
    return [e["type"] for e in delivery["events"]]


async def sent_by_meta(app: Harness, meta: WhatsappStandin) -> tuple[str, WaMessage, str]:
    """One template message sent through the Cloud API: its delivery id, what Meta
    received, and the webhook URL of the provider."""
    await configure(app, "wa", "whatsapp_cloud", meta.config())
    await app.put_recipient("u-1", phone="+14155550100")
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["provider"]) == ("sent", "wa"), delivery
    [message] = meta.received
    return delivery["id"], message, webhook_url(PUBLIC_URL, "wa", app.tenant_id)


# -- Meta's Cloud API, on both stores -------------------------------------------------------


async def test_a_template_message_goes_out_as_meta_validates_it(
    app: Harness, meta: WhatsappStandin
) -> None:
    delivery_id, message, _ = await sent_by_meta(app, meta)
    assert message.body["to"] == "+14155550100"
    assert message.body["biz_opaque_callback_data"] == delivery_id
    template = message.body["template"]
    assert (template["name"], template["language"]) == ("order_shipped", {"code": "en_US"})
    header, body, button = template["components"]
    assert header["parameters"] == [
        {"type": "image", "image": {"link": "https://cdn.example.com/o/A42.png"}}
    ]
    assert [p["text"] for p in body["parameters"]] == ["Alex", "A42"]
    assert button == {
        "type": "button",
        "sub_type": "url",
        "index": "0",
        "parameters": [{"type": "text", "text": "track/A42"}],
    }
    assert (await shown(app, delivery_id))["provider_message_id"] == message.id


async def test_delivered_then_read_are_recorded_once(app: Harness, meta: WhatsappStandin) -> None:
    delivery_id, message, url = await sent_by_meta(app, meta)
    response = await meta.report(app.client, url, message, "sent")
    assert response.status_code == 200, response.text
    assert (await shown(app, delivery_id))["status"] == "sent"
    response = await meta.report(app.client, url, message, "delivered")
    assert response.status_code == 200, response.text
    assert (await shown(app, delivery_id))["status"] == "delivered"
    for _ in range(2):  # Meta may send a notification again
        response = await meta.report(app.client, url, message, "read")
        assert response.status_code == 200
    delivery = await shown(app, delivery_id)
    assert delivery["status"] == "delivered"
    assert events(delivery)[-2:] == ["delivered", "read"]
    assert events(delivery).count("read") == 1


async def test_a_read_before_delivered_marks_both(app: Harness, meta: WhatsappStandin) -> None:
    delivery_id, message, url = await sent_by_meta(app, meta)
    await meta.report(app.client, url, message, "read")
    await meta.report(app.client, url, message, "delivered")  # late: changes nothing
    delivery = await shown(app, delivery_id)
    assert delivery["status"] == "delivered"
    assert events(delivery)[-2:] == ["delivered", "read"]
    assert events(delivery).count("delivered") == 1


async def test_a_text_outside_the_window_fails_with_its_reason(
    app: Harness, meta: WhatsappStandin
) -> None:
    await configure(app, "wa", "whatsapp_cloud", meta.config())
    await app.put_recipient("u-1", phone="+14155550100")
    await app.put_recipient("u-2", phone=NOT_ON_WHATSAPP)
    text_only = {"channels": {"whatsapp": {"text": "Order {{ orderId }} shipped"}}}
    deliveries = await deliver(app, "u-1", "u-2", template=text_only)
    assert [d["status"] for d in deliveries] == ["sent", "sent"]
    url = webhook_url(PUBLIC_URL, "wa", app.tenant_id)
    for message in meta.received:
        assert message.body["type"] == "text"
        assert message.body["text"] == {"body": "Order A42 shipped", "preview_url": False}
        response = await meta.report(app.client, url, message)  # its outcome: failed
        assert response.status_code == 200, response.text
    outside, undeliverable = [await shown(app, d["id"]) for d in deliveries]
    assert (outside["status"], outside["reason"]) == ("failed", "outside_window")
    assert "131047" in outside["last_error"]
    assert (undeliverable["status"], undeliverable["reason"]) == ("failed", "invalid_address")


async def test_a_whatsapp_number_wins_over_the_phone(app: Harness, meta: WhatsappStandin) -> None:
    await configure(app, "wa", "whatsapp_cloud", meta.config())
    await app.put_recipient("u-1", phone="+14155550100", whatsapp="+447700900123")
    await app.put_recipient("u-2", email="u2@example.com")  # no number: suppressed
    first, second = await deliver(app, "u-1", "u-2")
    assert first["status"] == "sent"
    assert (second["status"], second["reason"]) == ("suppressed", "no_address")
    assert [m.body["to"] for m in meta.received] == ["+447700900123"]


async def test_meta_throttling_is_retried_then_sent(app: Harness, meta: WhatsappStandin) -> None:
    await configure(app, "wa", "whatsapp_cloud", meta.config())
    await app.put_recipient("u-1", phone="+14155550100", locale="fr-FR")
    meta.throttle_next(retry_after="0")
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["attempts"]) == ("sent", 2), delivery
    assert meta.received[0].body["template"]["language"] == {"code": "fr"}


# -- signed webhooks: forged ones refused ---------------------------------------------------


async def test_forged_webhooks_are_refused_and_change_nothing(
    lite: Harness, meta: WhatsappStandin
) -> None:
    delivery_id, message, url = await sent_by_meta(lite, meta)
    labels = {"channel": "whatsapp", "provider": "whatsapp_cloud", "status": "refused"}
    before = _sample("clarion_provider_reports_total", labels)
    failed = meta.webhook(message, "failed", 131026)
    forged = await meta.post_webhook(lite.client, url, failed, app_secret="not-the-secret")
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_signature"
    # Signed by Meta, then changed on the way.
    delivered = meta.webhook(message, "delivered")
    tampered = delivered.replace(b'"delivered"', b'"failed"')
    for signature in (hub_signature(meta.app_secret, delivered), "sha256=" + "0" * 64, ""):
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        response = await lite.client.post(url, content=tampered, headers=headers)
        assert response.status_code == 403, response.text
    delivery = await shown(lite, delivery_id)
    assert delivery["status"] == "sent"
    assert "failed" not in events(delivery)
    assert _sample("clarion_provider_reports_total", labels) == before + 4


def _sample(name: str, labels: dict[str, str]) -> float:
    return metrics.METRICS.registry.get_sample_value(name, labels) or 0.0


async def test_a_webhook_reaches_only_its_own_tenants_deliveries(
    lite: Harness, meta: WhatsappStandin
) -> None:
    delivery_id, message, _ = await sent_by_meta(lite, meta)
    other = await tenant_store.create_tenant(lite.ctx.engine, "other")
    key = await tenant_store.create_key(lite.ctx.engine, other.id, ["manage"])
    body = {"channel": "whatsapp", "kind": "whatsapp_cloud", "config": meta.config()}
    response = await lite.client.put(
        "/v1/providers/wa", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    # The other tenant's webhook URL, signed with the same app secret: not its delivery.
    url = webhook_url(PUBLIC_URL, "wa", other.id)
    response = await meta.report(lite.client, url, message, "failed", error_code=131026)
    assert response.status_code == 200
    assert (await shown(lite, delivery_id))["status"] == "sent"


async def test_a_status_for_another_message_of_the_delivery_is_ignored(
    lite: Harness, meta: WhatsappStandin
) -> None:
    delivery_id, message, url = await sent_by_meta(lite, meta)
    other = WaMessage("wamid.other", message.body)
    response = await meta.report(lite.client, url, other, "failed", error_code=131026)
    assert response.status_code == 200
    assert (await shown(lite, delivery_id))["status"] == "sent"


async def test_the_webhook_verification_handshake(lite: Harness, meta: WhatsappStandin) -> None:
    await configure(lite, "wa", "whatsapp_cloud", meta.config())
    url = webhook_url(PUBLIC_URL, "wa", lite.tenant_id)
    response, challenge = await meta.verify(lite.client, url)
    assert response.status_code == 200, response.text
    assert response.text == challenge
    assert response.headers["content-type"].startswith("text/plain")
    wrong, _ = await meta.verify(lite.client, url, token="guess")
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "invalid_verify_token"
    params = {
        "hub.mode": "unsubscribe",
        "hub.verify_token": meta.verify_token,
        "hub.challenge": "1",
    }
    mode = await lite.client.get(httpx.URL(url).copy_merge_params(params))
    assert mode.status_code == 403
    hostile = {**params, "hub.mode": "subscribe", "hub.challenge": "<script>alert(1)</script>"}
    assert (await lite.client.get(httpx.URL(url).copy_merge_params(hostile))).status_code == 403
    unknown = webhook_url(PUBLIC_URL, "nope", lite.tenant_id)
    assert (await meta.verify(lite.client, unknown))[0].status_code == 404


async def test_malformed_webhooks_are_client_errors(lite: Harness, meta: WhatsappStandin) -> None:
    await configure(lite, "wa", "whatsapp_cloud", meta.config())
    url = webhook_url(PUBLIC_URL, "wa", lite.tenant_id)
    as_form = await lite.client.post(url, data={"status": "delivered"})
    assert as_form.status_code == 415
    not_json = await meta.post_webhook(lite.client, url, b"{not json")
    assert not_json.status_code == 403
    odd = orjson.dumps({"object": "page", "entry": [{"changes": [{"value": {"statuses": 7}}]}]})
    assert (await meta.post_webhook(lite.client, url, odd)).status_code == 200


# -- Twilio's WhatsApp sender, on both stores -----------------------------------------------


async def test_twilio_sends_the_content_template_and_records_its_reports(
    app: Harness, twilio: TwilioStandin
) -> None:
    config = twilio.config(**{"from": "whatsapp:+14155238886"})
    await configure(app, "wa-twilio", "twilio_whatsapp", config)
    await app.put_recipient("u-1", phone="+14155550100")
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["provider"]) == ("sent", "wa-twilio"), delivery
    [message] = twilio.received
    assert message.form["To"] == "whatsapp:+14155550100"
    assert message.form["From"] == "whatsapp:+14155238886"
    assert message.form["ContentSid"] == CONTENT_SID
    assert orjson.loads(message.form["ContentVariables"]) == {"1": "Alex", "2": "A42"}
    assert "Body" not in message.form
    for status in ("sent", "delivered", "read", "read"):
        response = await twilio.report(app.client, message, status)
        assert response.status_code == 204, response.text
    shown_delivery = await shown(app, delivery["id"])
    assert shown_delivery["status"] == "delivered"
    assert events(shown_delivery)[-2:] == ["delivered", "read"]
    assert events(shown_delivery).count("read") == 1


async def test_twilio_text_outside_the_window_fails_with_its_reason(
    lite: Harness, twilio: TwilioStandin
) -> None:
    await configure(lite, "wa-twilio", "twilio_whatsapp", twilio.config())
    await lite.put_recipient("u-1", whatsapp="+14155550100")
    text_only = {"channels": {"whatsapp": {"text": "Order {{ orderId }} shipped"}}}
    [delivery] = await deliver(lite, "u-1", template=text_only)
    [message] = twilio.received
    assert message.form["Body"] == "Order A42 shipped"
    forged = await twilio.report(lite.client, message, "failed", auth_token="nope")
    assert forged.status_code == 403
    response = await twilio.report(lite.client, message, "failed", error_code="63016")
    assert response.status_code == 204
    failed = await shown(lite, delivery["id"])
    assert (failed["status"], failed["reason"]) == ("failed", "outside_window")


async def test_a_meta_only_template_fails_through_twilio_with_render_error(
    lite: Harness, twilio: TwilioStandin
) -> None:
    await configure(lite, "wa-twilio", "twilio_whatsapp", twilio.config())
    await lite.put_recipient("u-1", phone="+14155550100")
    meta_only = {"channels": {"whatsapp": {"template": "hello_world", "language": "en_US"}}}
    [delivery] = await deliver(lite, "u-1", template=meta_only)
    assert (delivery["status"], delivery["reason"]) == ("failed", "render_error"), delivery
    assert twilio.received == []


async def test_whatsapp_without_a_provider_goes_to_the_sandbox(lite: Harness) -> None:
    await lite.put_recipient("u-1", phone="+14155550100")
    [delivery] = await deliver(lite, "u-1")
    assert (delivery["status"], delivery["provider"]) == ("sent", "sandbox")
    captured = await lite.client.get("/v1/sandbox/messages?channel=whatsapp", headers=lite.auth)
    [message] = captured.json()["data"]
    assert message["to"] == "+14155550100"
    assert message["content"]["body"] == ["Alex", "A42"]


# -- at the edge ----------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["4155550100", "+1", "+1415555010012345", "whatsapp:+1", 7])
async def test_invalid_whatsapp_numbers_are_422(lite: Harness, number: Any) -> None:
    response = await lite.client.put(
        "/v1/recipients/u-1", json={"whatsapp": number}, headers=lite.auth
    )
    assert response.status_code == 422, response.text
    assert "whatsapp" in [d["field"] for d in response.json()["error"]["details"]]


async def test_a_whatsapp_number_is_kept_in_e164(lite: Harness) -> None:
    await lite.put_recipient("u-1", whatsapp="+44 7700 900123")
    response = await lite.client.get("/v1/recipients/u-1", headers=lite.auth)
    assert response.json()["whatsapp"] == "+447700900123"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({}, "channels.whatsapp"),
        ({"template": "Order Shipped", "language": "en_US"}, "channels.whatsapp.template"),
        ({"template": "order_shipped"}, "channels.whatsapp.language"),
        ({"template": "t", "language": "english"}, "channels.whatsapp.language"),
        ({"text": "hi", "body": ["x"], "components": []}, "channels.whatsapp.components"),
        ({"template": "t", "language": "en", "body": ["ok", ""]}, "channels.whatsapp.body.1"),
        ({"template": "t", "language": "en", "body": {"Bad Name": "x"}}, "channels.whatsapp.body"),
        ({"template": "t", "language": "en", "body": "x"}, "channels.whatsapp.body"),
        (
            {"template": "t", "language": "en", "header": {"type": "audio", "link": "x"}},
            "channels.whatsapp.header.type",
        ),
        (
            {"template": "t", "language": "en", "header": {"type": "image"}},
            "channels.whatsapp.header.link",
        ),
        (
            {"template": "t", "language": "en", "header": {"type": "text", "link": "x"}},
            "channels.whatsapp.header.link",
        ),
        (
            {"template": "t", "language": "en", "buttons": [{"index": 12, "url": "x"}]},
            "channels.whatsapp.buttons.0.index",
        ),
        (
            {
                "template": "t",
                "language": "en",
                "buttons": [{"index": 0, "url": "x", "payload": "y"}],
            },
            "channels.whatsapp.buttons.0",
        ),
        (
            {"template": "t", "language": "en", "components": [{"x": 1}]},
            "channels.whatsapp.components.0",
        ),
        ({"content_sid": "HX123"}, "channels.whatsapp.content_sid"),
        (
            {"content_sid": CONTENT_SID, "content_variables": {"1": 2}},
            "channels.whatsapp.content_variables",
        ),
        ({"text": "  "}, "channels.whatsapp.text"),
        ({"text": "hi", "preview_url": "yes"}, "channels.whatsapp.preview_url"),
        ({"text": "hi", "title": "no"}, "channels.whatsapp.title"),
        ({"text": "hi", "digest": {"language": "en"}}, "channels.whatsapp.digest"),
        ("hello", "channels.whatsapp"),
    ],
)
async def test_invalid_whatsapp_parts_are_422(lite: Harness, part: Any, field: str) -> None:
    body = {"channels": {"whatsapp": part}}
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]], response.text


async def test_a_locales_whatsapp_part_is_checked_merged(lite: Harness) -> None:
    body = {
        "channels": {"whatsapp": {"template": "order_shipped", "language": "en_US"}},
        "locales": {"fr": {"whatsapp": {"language": "français"}}},
    }
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "locales.fr.whatsapp.language"
    body["locales"] = {"fr": {"whatsapp": {"language": "fr"}}}
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 200, response.text
