"""The delivery a send message carries: one shape from the stored row to the worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from clarion.broker.base import decode, encode
from clarion.domain.delivery import Delivery, MalformedDelivery, endpoint_of
from harness import Harness


def row(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": "dlv_1",
        "tenant_id": "ten_1",
        "notification_id": "ntf_1",
        "recipient_id": "u-1",
        "channel": "push",
        "provider": "fcm-main",
        "priority": "critical",
        "address": [{"platform": "android", "token": "t"}],
        "content": {"title": "Zoë ✓", "body": "b"},
        "attempts": 2,
        "expires_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "category": "security",
        "critical": True,
        "fallback": {"channel": "sms", "address": "+15551234567", "content": {"text": "t"}},
    }
    values.update(overrides)
    return values


def test_a_row_becomes_the_delivery_of_its_next_try_and_survives_the_wire() -> None:
    delivery = Delivery.from_row(row())

    assert delivery.attempt == 3
    assert delivery.stream == "send.push.critical"
    assert delivery.expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert Delivery.from_payload(decode(encode(delivery.to_payload()))) == delivery
    assert delivery.next_attempt().attempt == 4


def test_a_retry_goes_to_the_retry_lane_but_a_critical_one_keeps_its_own() -> None:
    first = Delivery.from_row(row(priority="normal", critical=False, attempts=0))
    assert first.stream == "send.push.normal"
    assert first.next_attempt().stream == "send.push.retry"
    assert Delivery.from_row(row()).next_attempt().stream == "send.push.critical"


def test_the_endpoint_is_a_webhooks_host_and_port_else_the_provider() -> None:
    hook = row(channel="webhook", address="https://Hooks.Example.com:8443/u/1?x=1")
    assert endpoint_of(Delivery.from_row(hook).to_payload()) == "hooks.example.com:8443"
    assert endpoint_of(Delivery.from_row(row()).to_payload()) == "fcm-main"
    assert endpoint_of(Delivery.from_row(row(provider=None)).to_payload()) is None


def test_naive_timestamps_from_sqlite_are_utc() -> None:
    naive = Delivery.from_row(row(expires_at=datetime(2030, 1, 2, 3, 4, 5)))
    assert naive.expires_at == Delivery.from_row(row()).expires_at


def test_a_message_of_an_earlier_version_without_optional_fields_decodes() -> None:
    payload = {
        "id": "dlv_1",
        "tenant": "ten_1",
        "notification": "ntf_1",
        "recipient": "u-1",
        "channel": "email",
        "priority": "normal",
        "to": "a@example.com",
        "content": {"subject": "s"},
        "attempt": 1,
    }
    delivery = Delivery.from_payload(orjson.loads(orjson.dumps(payload)))
    assert (delivery.provider, delivery.category, delivery.critical) == (None, None, False)
    assert delivery.fallback is None
    assert delivery.expires_at is None


@pytest.mark.parametrize(
    "change",
    [
        {"id": None},
        {"tenant": 5},
        {"attempt": "1"},
        {"attempt": 0},
        {"attempt": True},
        {"expires_at": "soon"},
        {"fallback": ["sms"]},
        {"channel": {"x": 1}},
    ],
)
def test_a_message_that_is_not_a_delivery_is_refused(change: dict[str, Any]) -> None:
    payload = {**Delivery.from_row(row()).to_payload(), **change}
    with pytest.raises(MalformedDelivery):
        Delivery.from_payload(payload)


@pytest.mark.parametrize("missing", ["id", "tenant", "notification", "attempt", "priority"])
def test_a_message_missing_a_required_field_is_refused(missing: str) -> None:
    payload = Delivery.from_row(row()).to_payload()
    del payload[missing]
    with pytest.raises(MalformedDelivery):
        Delivery.from_payload(payload)


async def test_a_worker_drops_a_message_that_is_not_a_delivery_and_goes_on(
    lite: Harness,
) -> None:
    await lite.put_recipient("u-1", email="u1@example.com")
    await lite.put_template("hello", {"channels": {"email": {"subject": "Hi", "text": "t"}}})
    stream = "send.email.normal"
    await lite.ctx.broker.publish(stream, [{"id": "dlv_x", "attempt": "many"}, {"n": 1}])

    response = await lite.send({"template": "hello", "to": {"recipient_id": "u-1"}})
    assert response.status_code == 202, response.text
    await lite.drain()

    assert (await lite.ctx.broker.backlog([stream]))[stream] == 0
    note = await lite.notification(response.json()["id"])
    assert note["status"] == "completed"
