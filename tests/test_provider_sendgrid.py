"""The SendGrid provider against a local v3 mail/send endpoint."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.sendgrid import SendgridProvider
from clarion.security.unsubscribe import verify_token
from clarion.store.db import utcnow
from clarion.store.tenants import webhook_secrets
from harness import Harness, make_settings
from standins import serving
from standins.sendgrid import SendgridStandIn, Upcoming

PUBLIC = "https://clarion.example"
SUBJECT = "Su pedido ha sido enviado — ¡gracias! ✓"


def outbound(harness: Harness, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": "dlv_sendgriddelivery000000001",
        "tenant": harness.tenant_id,
        "notification": "ntf_1",
        "recipient": "u-1",
        "channel": "email",
        "to": "alex@example.com",
        "content": {"subject": SUBJECT, "html": "<p>Hola</p>", "text": "Hola"},
        "priority": "normal",
        "attempt": 1,
        "category": "marketing",
    }
    return Delivery(**{**fields, **overrides})


def provider(harness: Harness, sendgrid: SendgridStandIn, **config: Any) -> SendgridProvider:
    settings = make_settings(
        harness.settings.database_url, harness.settings.broker_url, public_url=PUBLIC
    )
    spec = ProviderSpec(
        tenant_id=harness.tenant_id,
        name="sendgrid-main",
        kind="sendgrid",
        channel="email",
        config={
            "api_key": "SG.standin",
            "from": "Acme Señal <no-reply@acme.test>",
            "base_url": sendgrid.url,
            **config,
        },
    )
    return SendgridProvider(spec, ProviderEnv(settings=settings, engine=harness.ctx.engine))


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendgridStandIn]:
    async with serving(SendgridStandIn()) as server:
        yield server


async def send(client: SendgridProvider, message: Delivery) -> str | None:
    await client.start()
    try:
        return (await client.send(message)).provider_message_id
    finally:
        await client.aclose()


async def test_sends_json_with_headers_and_custom_args(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    message_id = await send(provider(lite, sendgrid), outbound(lite))

    [body] = sendgrid.sent
    assert message_id
    assert body["personalizations"] == [{"to": [{"email": "alex@example.com"}]}]
    assert body["from"] == {"email": "no-reply@acme.test", "name": "Acme Señal"}
    assert body["subject"] == SUBJECT
    assert body["content"] == [
        {"type": "text/plain", "value": "Hola"},
        {"type": "text/html", "value": "<p>Hola</p>"},
    ]
    assert body["custom_args"] == {"clarion_delivery_id": "dlv_sendgriddelivery000000001"}
    headers = body["headers"]
    assert headers["X-Clarion-Delivery-Id"] == "dlv_sendgriddelivery000000001"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    prefix = f"<{PUBLIC}/v1/unsubscribe/"
    assert headers["List-Unsubscribe"].startswith(prefix)
    token = headers["List-Unsubscribe"][len(prefix) : -1]
    assert await verify_token(webhook_secrets(lite.ctx.engine), token) is not None


async def test_critical_email_has_no_unsubscribe(lite: Harness, sendgrid: SendgridStandIn) -> None:
    await send(provider(lite, sendgrid), outbound(lite, category="security", critical=True))
    assert set(sendgrid.sent[0]["headers"]) == {"X-Clarion-Delivery-Id"}


async def test_text_only_email(lite: Harness, sendgrid: SendgridStandIn) -> None:
    await send(provider(lite, sendgrid), outbound(lite, content={"subject": "s", "text": "t"}))
    assert sendgrid.sent[0]["content"] == [{"type": "text/plain", "value": "t"}]


@pytest.mark.parametrize(
    ("key", "scopes"), [("SG.wrong", None), ("SG.readonly", {"stats.read"})], ids=["401", "403"]
)
async def test_refused_key_is_bad_credentials(
    lite: Harness, sendgrid: SendgridStandIn, key: str, scopes: set[str] | None
) -> None:
    if scopes is not None:
        sendgrid.keys[key] = scopes
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, sendgrid, api_key=key), outbound(lite))
    assert caught.value.reason == "bad_credentials"
    assert sendgrid.sent == []


async def test_rejected_address_is_permanent_with_sendgrids_message(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    sendgrid.reject.add("nobody@example.com")
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, sendgrid), outbound(lite, to="nobody@example.com"))
    assert caught.value.reason == "provider_rejected"
    assert "personalizations.0.to.0.email: Does not contain a valid address." in str(
        caught.value.message
    )


def in_seconds(seconds: float) -> str:
    """An HTTP date ``seconds`` from now."""
    return format_datetime(utcnow() + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("upcoming", "retry_after"),
    [
        (Upcoming(429, "too many requests", {"Retry-After": "12"}), 12.0),
        (Upcoming(429, "too many requests"), None),
        (Upcoming(500, "internal error"), None),
        (Upcoming(502, "bad gateway", {"Retry-After": "1"}), 1.0),
    ],
    ids=["429-retry-after", "429", "500", "502"],
)
async def test_throttling_and_outages_are_transient(
    lite: Harness,
    sendgrid: SendgridStandIn,
    upcoming: Upcoming,
    retry_after: float | None,
) -> None:
    sendgrid.upcoming.append(upcoming)
    client = provider(lite, sendgrid)
    await client.start()
    try:
        with pytest.raises(TransientError) as caught:
            await client.send(outbound(lite))
        await client.send(outbound(lite))
    finally:
        await client.aclose()
    assert caught.value.retry_after == retry_after
    assert len(sendgrid.sent) == 1


async def test_rate_limit_reset_and_http_date_give_a_retry_after(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    reset = str(int(time.time()) + 3600)
    sendgrid.upcoming.append(Upcoming(429, "slow down", {"X-RateLimit-Reset": reset}))
    sendgrid.upcoming.append(Upcoming(503, "later", {"Retry-After": in_seconds(1800)}))
    client = provider(lite, sendgrid)
    await client.start()
    try:
        with pytest.raises(TransientError) as by_reset:
            await client.send(outbound(lite))
        with pytest.raises(TransientError) as by_date:
            await client.send(outbound(lite))
    finally:
        await client.aclose()
    # Bounds, not timings: the hour and the half hour are each what is left of them.
    assert by_reset.value.retry_after is not None
    assert 3000 < by_reset.value.retry_after <= 3600
    assert by_date.value.retry_after is not None
    assert 1200 < by_date.value.retry_after <= 1800


async def test_server_down_is_transient(lite: Harness) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = SendgridStandIn(port=sock.getsockname()[1])
    with pytest.raises(TransientError) as caught:
        await send(provider(lite, down), outbound(lite))
    assert caught.value.reason == "connection_error"


async def test_unusable_address_never_reaches_sendgrid(
    lite: Harness, sendgrid: SendgridStandIn
) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, sendgrid), outbound(lite, to=["not", "a", "string"]))
    assert caught.value.reason == "invalid_address"
    assert sendgrid.sent == []
