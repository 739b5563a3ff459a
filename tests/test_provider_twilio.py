"""Twilio SMS against a local stand-in of the Messages API, and Twilio's signed status
callbacks into Clarion's API."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.twilio import (
    TwilioProvider,
    signature,
    status_callback_url,
    valid_signature,
)
from clarion.store.tables import deliveries, delivery_events
from harness import Harness, make_settings, running
from standins import serving
from standins.twilio import Sms, TwilioStandin, twilio_signature

PUBLIC_URL = "https://notify.example.com"
SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with serving(TwilioStandin()) as server:
        yield server


@pytest.fixture
async def env() -> AsyncIterator[ProviderEnv]:
    engine = create_async_engine("sqlite+aiosqlite://")
    yield ProviderEnv(
        settings=Settings(allow_private_webhooks=True, public_url=PUBLIC_URL), engine=engine
    )
    await engine.dispose()


@pytest.fixture
async def provider_of(
    env: ProviderEnv,
) -> AsyncIterator[Any]:
    made: list[TwilioProvider] = []

    async def make(config: dict[str, Any], name: str = "sms-main") -> TwilioProvider:
        spec = ProviderSpec(tenant_id="t1", name=name, kind="twilio", channel="sms", config=config)
        provider = TwilioProvider(spec, env)
        await provider.start()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def sms(to: str = "+14155550100", text: str = "Order 42 shipped") -> Delivery:
    return Delivery(
        id="dlv_1",
        tenant="t1",
        notification="ntf_1",
        recipient="u-1",
        channel="sms",
        to=to,
        content={"text": text},
        priority="normal",
        attempt=1,
    )


# -- sending ------------------------------------------------------------------------------


async def test_send_returns_the_message_sid(twilio: TwilioStandin, provider_of: Any) -> None:
    provider = await provider_of(twilio.config())
    result = await provider.send(sms())
    [received] = twilio.received
    assert result.provider_message_id == received.sid
    assert re.fullmatch(r"SM[0-9a-f]{32}", received.sid)
    assert received.form["To"] == "+14155550100"
    assert received.form["From"] == "+15005550006"
    assert received.form["Body"] == "Order 42 shipped"
    assert received.status_callback == (
        f"{PUBLIC_URL}/v1/providers/sms-main/callbacks?tenant=t1&delivery=dlv_1"
    )


async def test_a_messaging_service_sends_as_messaging_service_sid(
    twilio: TwilioStandin, provider_of: Any
) -> None:
    service = "MG" + secrets.token_hex(16)
    provider = await provider_of(twilio.config(**{"from": service}))
    await provider.send(sms())
    [received] = twilio.received
    assert received.form["MessagingServiceSid"] == service
    assert "From" not in received.form


@pytest.mark.parametrize("number", ["+15005550001", "+15005550009"])
async def test_an_invalid_number_is_permanent(
    twilio: TwilioStandin, provider_of: Any, number: str
) -> None:
    provider = await provider_of(twilio.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(sms(to=number))
    assert caught.value.reason == "invalid_address"
    assert twilio.received == []


@pytest.mark.parametrize("to", ["4155550100", "+0123", "", None, ["+14155550100"]])
async def test_a_number_not_in_e164_is_refused_before_sending(
    twilio: TwilioStandin, provider_of: Any, to: Any
) -> None:
    provider = await provider_of(twilio.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(sms(to=to))
    assert caught.value.reason in ("invalid_address", "no_address")
    assert twilio.rejected == []  # nothing was sent


async def test_bad_credentials_are_permanent(twilio: TwilioStandin, provider_of: Any) -> None:
    provider = await provider_of(twilio.config(auth_token="not-the-token"))
    with pytest.raises(PermanentError) as caught:
        await provider.send(sms())
    assert caught.value.reason == "bad_credentials"
    assert "20003" in caught.value.message


async def test_too_many_requests_is_transient_with_retry_after(
    twilio: TwilioStandin, provider_of: Any
) -> None:
    provider = await provider_of(twilio.config())
    twilio.fail_next(429, retry_after="7")
    with pytest.raises(TransientError) as caught:
        await provider.send(sms())
    assert caught.value.retry_after == 7.0
    assert "20429" in caught.value.message
    result = await provider.send(sms())  # the next try goes through
    assert result.provider_message_id == twilio.received[0].sid


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    twilio: TwilioStandin, provider_of: Any, status: int
) -> None:
    provider = await provider_of(twilio.config())
    twilio.fail_next(status)
    with pytest.raises(TransientError) as caught:
        await provider.send(sms())
    assert caught.value.reason == f"http_{status}"


async def test_other_refusals_are_permanent(twilio: TwilioStandin, provider_of: Any) -> None:
    provider = await provider_of(twilio.config())
    twilio.fail_next(400)  # 21610: the recipient replied STOP
    with pytest.raises(PermanentError) as caught:
        await provider.send(sms())
    assert caught.value.reason == "opted_out"


async def test_server_down_is_transient(twilio: TwilioStandin, provider_of: Any) -> None:
    config = twilio.config()
    await twilio.close()
    provider = await provider_of(config)
    with pytest.raises(TransientError) as caught:
        await provider.send(sms())
    assert caught.value.reason == "connection_error"


async def test_empty_text_is_permanent(twilio: TwilioStandin, provider_of: Any) -> None:
    provider = await provider_of(twilio.config())
    with pytest.raises(PermanentError):
        await provider.send(sms(text=""))


def test_signature_matches_twilios_reference_vectors() -> None:
    # The vectors of Twilio's own request validator tests.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }
    expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert signature("12345", url, params.items()) == expected
    assert twilio_signature("12345", url, params) == expected
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    # Twilio may sign with the default port spelled out; both forms are accepted.
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert valid_signature("12345", url, params.items(), "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert valid_signature("12345", with_port, params.items(), expected)
    assert not valid_signature("12345", url, params.items(), expected[:-2] + "A=")
    assert not valid_signature("12345", url, params.items(), None)


# -- status callbacks through Clarion -----------------------------------------------------


@pytest.fixture
async def clarion(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    settings = make_settings(*backend, public_url=PUBLIC_URL, secret_key=SECRET_KEY)
    async with running(settings) as harness:
        yield harness


async def _configure(app: Harness, twilio: TwilioStandin, name: str = "sms-main") -> None:
    body = {"channel": "sms", "kind": "twilio", "config": twilio.config()}
    response = await app.client.put(f"/v1/providers/{name}", json=body, headers=app.auth)
    assert response.status_code in (200, 201), response.text


async def _sent_sms(app: Harness, twilio: TwilioStandin) -> tuple[str, Sms]:
    """Send one SMS through Clarion; returns its delivery id and what Twilio received."""
    await _configure(app, twilio)
    # name_for (the planner's choice) answers from the settings prepare() loaded.
    await app.ctx.providers.prepare([app.tenant_id])
    await app.put_recipient("u-1", phone="+14155550100")
    await app.put_template("shipped", {"channels": {"sms": {"text": "Order {{ id }} shipped"}}})
    response = await app.send(
        {"template": "shipped", "to": {"recipient_id": "u-1"}, "data": {"id": 7}}
    )
    assert response.status_code == 202, response.text
    await app.drain()
    [delivery] = (await app.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "sent", delivery
    assert delivery["provider"] == "sms-main"
    [received] = twilio.received
    assert received.body == "Order 7 shipped"
    return delivery["id"], received


async def _row(app: Harness, delivery_id: str) -> dict[str, Any]:
    async with app.ctx.engine.connect() as conn:
        row = (await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))).one()
    return dict(row._mapping)


async def _events(app: Harness, delivery_id: str) -> list[str]:
    query = (
        select(delivery_events.c.status)
        .where(delivery_events.c.delivery_id == delivery_id)
        .order_by(delivery_events.c.id)
    )
    async with app.ctx.engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def test_delivered_report_marks_the_delivery_delivered(
    clarion: Harness, twilio: TwilioStandin
) -> None:
    delivery_id, received = await _sent_sms(clarion, twilio)
    assert (await _row(clarion, delivery_id))["provider_message_id"] == received.sid

    for status in ("queued", "sending", "sent"):  # no change
        response = await twilio.report(clarion.client, received, status)
        assert response.status_code == 204
        assert (await _row(clarion, delivery_id))["status"] == "sent"

    response = await twilio.report(clarion.client, received, "delivered")
    assert response.status_code == 204, response.text
    row = await _row(clarion, delivery_id)
    assert row["status"] == "delivered"
    assert (await _events(clarion, delivery_id))[-1] == "delivered"

    # A late or repeated report never moves it back.
    response = await twilio.report(clarion.client, received, "undelivered", error_code="30003")
    assert response.status_code == 204
    assert (await _row(clarion, delivery_id))["status"] == "delivered"
    assert (await _events(clarion, delivery_id)).count("delivered") == 1


async def test_undelivered_report_fails_the_delivery(
    clarion: Harness, twilio: TwilioStandin
) -> None:
    delivery_id, received = await _sent_sms(clarion, twilio)
    response = await twilio.report(clarion.client, received, "undelivered", error_code="30003")
    assert response.status_code == 204
    row = await _row(clarion, delivery_id)
    assert row["status"] == "failed"
    assert row["reason"] == "provider_rejected"
    assert "30003" in row["last_error"]
    response = await twilio.report(clarion.client, received, "delivered")
    assert (await _row(clarion, delivery_id))["status"] == "failed"
    [delivery] = (await clarion.notification(row["notification_id"]))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "provider_rejected"


async def test_a_bad_signature_is_refused(clarion: Harness, twilio: TwilioStandin) -> None:
    delivery_id, received = await _sent_sms(clarion, twilio)
    wrong_token = await twilio.report(clarion.client, received, "delivered", auth_token="nope")
    assert wrong_token.status_code == 403
    assert wrong_token.json()["error"]["code"] == "invalid_signature"
    # Signed over the address the request came in at (its Host), not the public one.
    as_received = received.status_callback.replace(PUBLIC_URL, "http://clarion")
    host_based = await twilio.report(clarion.client, received, "delivered", url=as_received)
    assert host_based.status_code == 403
    unsigned = await clarion.client.post(
        received.status_callback, data={"MessageSid": received.sid, "MessageStatus": "delivered"}
    )
    assert unsigned.status_code == 403
    assert unsigned.json()["error"]["code"] == "invalid_signature"
    assert (await _row(clarion, delivery_id))["status"] == "sent"


async def test_the_signature_covers_the_delivery_named(
    clarion: Harness, twilio: TwilioStandin
) -> None:
    delivery_id, received = await _sent_sms(clarion, twilio)
    other = Sms(received.sid, {**received.form})
    other.form["StatusCallback"] = received.status_callback.replace(delivery_id, "dlv_other")
    # Signed for the real delivery, sent for another.
    response = await twilio.report(clarion.client, other, "delivered", url=received.status_callback)
    assert response.status_code == 403


async def test_unknown_provider_or_tenant_is_404(clarion: Harness, twilio: TwilioStandin) -> None:
    delivery_id, received = await _sent_sms(clarion, twilio)
    for url in (
        status_callback_url(PUBLIC_URL, "nope", clarion.tenant_id, delivery_id),
        status_callback_url(PUBLIC_URL, "sms-main", "ten_unknown", delivery_id),
        status_callback_url(PUBLIC_URL, "sandbox", clarion.tenant_id, delivery_id),
    ):
        target = Sms(received.sid, {**received.form, "StatusCallback": url})
        response = await twilio.report(clarion.client, target, "delivered")
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"
    assert (await _row(clarion, delivery_id))["status"] == "sent"


async def test_malformed_callbacks_are_client_errors(
    lite: Harness, twilio: TwilioStandin, tmp_path: Path
) -> None:
    await _configure(lite, twilio)
    path = "/v1/providers/sms-main/callbacks"
    missing = await lite.client.post(path, data={"MessageStatus": "delivered"})
    assert missing.status_code == 422
    url = f"{path}?tenant={lite.tenant_id}&delivery=dlv_x"
    as_json = await lite.client.post(url, json={"MessageStatus": "delivered"})
    assert as_json.status_code == 415
    assert as_json.json()["error"]["code"] == "unsupported_media_type"
