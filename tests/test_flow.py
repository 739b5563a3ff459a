"""The pipeline end to end, on every backend: API → store → broker → workers → providers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from clarion.broker import Message
from clarion.broker.codec import Payload
from clarion.domain.models import PLAN_CRITICAL_STREAM, PLAN_HIGH_STREAM, PLAN_STREAM
from clarion.pipeline.messages import planned_ids
from clarion.security.signing import verify
from clarion.store import tenants as tenant_store
from conftest import WITH_ENGINES
from harness import Harness
from webhook_sink import WebhookSink

TEMPLATE = {
    "channels": {
        "email": {
            "subject": "Your order {{ orderId }} shipped",
            "html": "<p>Hello {{ firstName }}</p>",
            "text": "Hello {{ firstName }}",
        },
        "sms": {"text": "Order {{ orderId }} shipped"},
        "inapp": {"title": "Shipped", "body": "Order {{ orderId }}"},
        "webhook": {"body": {"event": "order_shipped", "order": "{{ orderId }}"}},
    },
    "locales": {"fr": {"email": {"subject": "Votre commande {{ orderId }} est partie"}}},
}


@pytest.mark.parametrize("backend", WITH_ENGINES, indirect=True)
async def test_notification_is_delivered_on_every_channel(app: Harness, sink: WebhookSink) -> None:
    await app.put_recipient(
        "u-123",
        email="alex@example.com",
        phone="+14155550100",
        locale="fr-CA",
        webhook_url=f"{sink.url}/hooks/alex",
        data={"firstName": "Alex"},
    )
    await app.put_template("order_shipped", TEMPLATE)
    response = await app.send(
        {"template": "order_shipped", "to": {"recipient_id": "u-123"}, "data": {"orderId": "A1"}}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["id"].startswith("ntf_")

    await app.drain()

    note = await app.notification(body["id"])
    assert note["status"] == "completed"
    by_channel = {d["channel"]: d for d in note["deliveries"]}
    assert set(by_channel) == {"email", "sms", "inapp", "webhook"}
    assert all(d["status"] == "sent" and d["attempts"] == 1 for d in by_channel.values())

    sandbox = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()["data"]
    emails = [m for m in sandbox if m["channel"] == "email"]
    assert emails[0]["to"] == "alex@example.com"
    assert emails[0]["content"]["subject"] == "Votre commande A1 est partie"  # fr-CA → fr
    assert emails[0]["content"]["html"] == "<p>Hello Alex</p>"

    [hook] = sink.received
    assert hook.path == "/hooks/alex"
    assert json.loads(hook.body) == {"event": "order_shipped", "order": "A1"}
    assert hook.headers["idempotency-key"] == by_channel["webhook"]["id"]
    tenant = await tenant_store.get_tenant(app.ctx.engine, app.tenant_id)
    assert tenant is not None
    assert verify(tenant.webhook_secret, hook.body, hook.headers["clarion-signature"])


@pytest.mark.parametrize("backend", WITH_ENGINES, indirect=True)
async def test_batch_of_a_thousand_reaches_the_sink(app: Harness, sink: WebhookSink) -> None:
    recipients = [{"id": f"r{i}", "webhook_url": f"{sink.url}/r{i}"} for i in range(50)]
    response = await app.client.post(
        "/v1/recipients/batch", json={"recipients": recipients}, headers=app.auth
    )
    assert response.status_code == 200
    await app.put_template("ping", {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}})
    items = [
        {"template": "ping", "to": {"recipient_id": f"r{i % 50}"}, "data": {"n": i}}
        for i in range(1000)
    ]
    response = await app.client.post(
        "/v1/notifications/batch", json={"notifications": items}, headers=app.auth
    )
    assert response.status_code == 202
    results = response.json()["results"]
    assert len(results) == 1000
    assert all("id" in r for r in results)

    await app.drain()

    assert sink.count == 1000
    assert sorted(int(json.loads(r.body)["n"]) for r in sink.received) == list(range(1000))
    note = await app.notification(results[-1]["id"])
    assert note["deliveries"][0]["status"] == "sent"


async def test_recipient_list_and_missing_address(app: Harness, sink: WebhookSink) -> None:
    await app.put_recipient("a", webhook_url=f"{sink.url}/a")
    await app.put_recipient("b")  # no webhook URL
    await app.put_template("t", {"channels": {"webhook": {"body": {"x": "1"}}}})
    response = await app.send({"template": "t", "to": {"recipient_ids": ["a", "b", "a"]}})
    assert response.status_code == 202
    await app.drain()
    note = await app.notification(response.json()["id"])
    states = {d["recipient_id"]: (d["status"], d["reason"]) for d in note["deliveries"]}
    assert states == {"a": ("sent", None), "b": ("suppressed", "no_address")}
    assert note["status"] == "completed"
    assert sink.count == 1


async def test_channels_narrow_the_template(app: Harness) -> None:
    await app.put_recipient("u", email="u@example.com", phone="+33612345678")
    await app.put_template("t", TEMPLATE)
    response = await app.send(
        {
            "template": "t",
            "to": {"recipient_id": "u"},
            "channels": ["sms"],
            "data": {"orderId": "1", "firstName": "U"},
        }
    )
    await app.drain()
    note = await app.notification(response.json()["id"])
    assert [d["channel"] for d in note["deliveries"]] == ["sms"]


async def test_missing_variable_fails_the_delivery_with_render_error(app: Harness) -> None:
    await app.put_recipient("u", phone="+33612345678")
    await app.put_template("t", {"channels": {"sms": {"text": "Hi {{ name }}"}}})
    response = await app.send({"template": "t", "to": {"recipient_id": "u"}})
    await app.drain()
    [delivery] = (await app.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "render_error"
    assert "name" in delivery["last_error"]


async def test_a_notification_ends_completed_partial_or_failed(app: Harness) -> None:
    """`completed`: nothing failed; `partial`: some sent, some failed; `failed`: none sent."""
    await app.put_recipient("ok", phone="+33612345678", data={"name": "Alex"})
    await app.put_recipient("ko", phone="+33612345679")
    await app.put_template("t", {"channels": {"sms": {"text": "Hi {{ name }}"}}})
    answers = [
        await app.send({"template": "t", "to": {"recipient_ids": ids}, "data": data})
        for ids, data in (
            (["ok"], {}),
            (["ok", "ko"], {}),
            (["ko"], {}),
        )
    ]
    await app.drain()
    statuses = [(await app.notification(a.json()["id"]))["status"] for a in answers]
    assert statuses == ["completed", "partial", "failed"]


async def test_critical_notifications_are_planned_from_a_stream_of_their_own(
    app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A critical send never waits behind other notifications' planning, nor for the plan
    stream's leader: the intake, and the relay for a scheduled one, publish it to the
    critical plan stream, which every planner reads at once."""
    planned_from: dict[str, str] = {}
    publish = app.ctx.broker.publish

    async def noting(stream: str, payloads: Sequence[Payload]) -> None:
        if stream.startswith("plan"):
            # A message may carry more than one (the relay's, of one priority).
            planned_from.update(
                (nid, stream) for p in payloads for nid in planned_ids(Message(stream, "", dict(p)))
            )
        await publish(stream, payloads)

    monkeypatch.setattr(app.ctx.broker, "publish", noting)
    await app.put_recipient("u", phone="+33612345678")
    await app.put_template("t", {"channels": {"sms": {"text": "code 1234"}}})
    body = {"template": "t", "to": {"recipient_id": "u"}}
    now = datetime.now(UTC)
    sends = {
        "critical": {**body, "priority": "critical"},
        "normal": body,
        "critical later": {
            **body,
            "priority": "critical",
            "send_at": (now + timedelta(hours=1)).isoformat(),
        },
        "high later": {
            **body,
            "priority": "high",
            "send_at": (now + timedelta(hours=1)).isoformat(),
        },
    }
    ids = {name: (await app.send(sent)).json()["id"] for name, sent in sends.items()}
    app.ctx.clock = lambda: now + timedelta(hours=2)  # the relay publishes the later ones

    async def all_sent() -> bool:
        for nid in ids.values():
            deliveries = (await app.notification(nid))["deliveries"]
            if [d["status"] for d in deliveries] != ["sent"]:
                return False
        return True

    await app.until(all_sent)
    assert {name: planned_from[nid] for name, nid in ids.items()} == {
        "critical": PLAN_CRITICAL_STREAM,
        "normal": PLAN_STREAM,
        "critical later": PLAN_CRITICAL_STREAM,
        "high later": PLAN_HIGH_STREAM,
    }


@pytest.mark.parametrize("backend", WITH_ENGINES, indirect=True)
async def test_critical_lane_is_served(app: Harness) -> None:
    await app.put_recipient("u", phone="+33612345678")
    await app.put_template("t", {"channels": {"sms": {"text": "code 1234"}}})
    response = await app.send(
        {"template": "t", "to": {"recipient_id": "u"}, "priority": "critical"}
    )
    await app.drain()
    [delivery] = (await app.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "sent"
