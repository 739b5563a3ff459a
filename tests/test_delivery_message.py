"""The delivery a send message carries: one shape from the stored row to the worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest

from clarion.broker.codec import decode, encode
from clarion.domain.delivery import Delivery, MalformedDelivery, decode_delivery, endpoint_of
from clarion.errors import TransientError
from clarion.resilience.retry import RetryPolicy
from clarion.store.delivery_rows import delivery_of
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
    delivery = delivery_of(row())

    assert delivery.attempt == 3
    assert delivery.stream == "send.push.critical"
    assert delivery.expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert decode_delivery(decode(encode(delivery))) == delivery
    assert delivery.next_attempt().attempt == 4


def test_a_retry_goes_to_the_retry_lane_but_a_critical_one_keeps_its_own() -> None:
    first = delivery_of(row(priority="normal", critical=False, attempts=0))
    assert first.stream == "send.push.normal"
    assert first.next_attempt().stream == "send.push.retry"
    assert delivery_of(row()).next_attempt().stream == "send.push.critical"


def test_a_failed_first_try_is_retried_on_the_retry_lane() -> None:
    first = delivery_of(row(priority="normal", critical=False, attempts=0))
    now = datetime(2030, 1, 1, tzinfo=UTC)

    _change, retry = RetryPolicy(max_attempts=3, schedule=[1.0]).on_failure(
        first, TransientError("503"), now
    )

    assert retry is not None
    assert retry.stream == "send.push.retry"
    assert retry.payload == first.next_attempt()


def _wire(delivery: Delivery) -> dict[str, Any]:
    """A delivery as a consumer gets it from the broker."""
    return decode(encode(delivery))


def test_the_endpoint_is_a_webhooks_host_and_port_else_the_provider() -> None:
    hook = row(channel="webhook", address="https://Hooks.Example.com:8443/u/1?x=1")
    assert endpoint_of(_wire(delivery_of(hook))) == "hooks.example.com:8443"
    assert endpoint_of(_wire(delivery_of(row()))) == "fcm-main"
    assert endpoint_of(_wire(delivery_of(row(provider=None)))) is None


def test_naive_timestamps_from_sqlite_are_utc() -> None:
    naive = delivery_of(row(expires_at=datetime(2030, 1, 2, 3, 4, 5)))
    assert naive.expires_at == delivery_of(row()).expires_at


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
    delivery = decode_delivery(orjson.loads(orjson.dumps(payload)))
    assert (delivery.provider, delivery.category, delivery.critical) == (None, None, False)
    assert delivery.fallback is None
    assert delivery.expires_at is None


# Send messages as the previous version's encoder wrote them (every field, nulls included):
# deliveries queued before an upgrade are still sent after it.
EARLIER_CRITICAL = (
    b'{"id":"dlv_01jd7k2m3n4p5q6r7s8t9v0w1x","tenant":"ten_1",'
    b'"notification":"ntf_01jd7k2m3n4p5q6r7s8t9v0w1x","recipient":"u-1","channel":"push",'
    b'"provider":"fcm-main","priority":"critical","to":[{"platform":"android","token":"t"}],'
    b'"content":{"title":"Zo\xc3\xab \xe2\x9c\x93","body":"b"},"attempt":2,'
    b'"expires_at":1893553445.0,"category":"security","critical":true,'
    b'"fallback":{"channel":"sms","address":"+15551234567","content":{"text":"t"}},'
    b'"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
)
EARLIER_PLAIN = (
    b'{"id":"dlv_01jd7k2m3n4p5q6r7s8t9v0w1x","tenant":"ten_1",'
    b'"notification":"ntf_01jd7k2m3n4p5q6r7s8t9v0w1x","recipient":"u-1","channel":"email",'
    b'"provider":null,"priority":"normal","to":"a@example.com","content":{"subject":"s"},'
    b'"attempt":2,"expires_at":null,"category":null,"critical":false,"fallback":null}'
)


def test_a_message_queued_by_the_previous_version_decodes() -> None:
    critical = decode_delivery(decode(EARLIER_CRITICAL))
    assert critical == Delivery(
        id="dlv_01jd7k2m3n4p5q6r7s8t9v0w1x",
        tenant="ten_1",
        notification="ntf_01jd7k2m3n4p5q6r7s8t9v0w1x",
        recipient="u-1",
        channel="push",
        provider="fcm-main",
        priority="critical",
        to=[{"platform": "android", "token": "t"}],
        content={"title": "Zoë ✓", "body": "b"},
        attempt=2,
        expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp(),
        category="security",
        critical=True,
        fallback={"channel": "sms", "address": "+15551234567", "content": {"text": "t"}},
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    plain = decode_delivery(decode(EARLIER_PLAIN))
    assert (plain.channel, plain.to, plain.content, plain.attempt) == (
        "email",
        "a@example.com",
        {"subject": "s"},
        2,
    )
    assert (plain.provider, plain.expires_at, plain.category, plain.fallback) == (None,) * 4
    assert (plain.critical, plain.trace) == (False, None)


@pytest.mark.parametrize("earlier", [EARLIER_CRITICAL, EARLIER_PLAIN])
def test_the_wire_keeps_the_previous_versions_names_and_values(earlier: bytes) -> None:
    """What this version writes is what the previous one wrote, less the fields at their
    defaults (which the previous version read as absent): it reads this version's too."""
    old = decode(earlier)
    new = decode(encode(decode_delivery(old)))
    assert new == {k: v for k, v in old.items() if v is not None and v is not False}


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
    payload = {**msgspec.to_builtins(delivery_of(row())), **change}
    with pytest.raises(MalformedDelivery):
        decode_delivery(payload)


@pytest.mark.parametrize("missing", ["id", "tenant", "notification", "attempt", "priority"])
def test_a_message_missing_a_required_field_is_refused(missing: str) -> None:
    payload = msgspec.to_builtins(delivery_of(row()))
    del payload[missing]
    with pytest.raises(MalformedDelivery):
        decode_delivery(payload)


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
