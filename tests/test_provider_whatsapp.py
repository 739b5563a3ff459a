"""The WhatsApp providers against local stand-ins: Meta's Cloud API (requests, answers and
error codes), its signed webhooks and handshake read on their own, and Twilio's WhatsApp
sender."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec, ReportRefused
from clarion.providers.twilio import signature as twilio_signature
from clarion.providers.twilio_whatsapp import TwilioWhatsappProvider
from clarion.providers.twilio_whatsapp import read_report as read_twilio_report
from clarion.providers.whatsapp import (
    MAX_STATUSES,
    WhatsappCloudProvider,
    read_reports,
    signature,
    verify_subscription,
)
from standins import serving
from standins.twilio import TwilioStandin
from standins.whatsapp import WaMessage, WhatsappStandin, hub_signature, meta_error

PUBLIC_URL = "https://notify.example.com"
CONTENT_SID = "HX" + "ab" * 16
TEMPLATE = {
    "template": "order_shipped",
    "language": "en_US",
    "header": {"type": "image", "link": "https://cdn.example.com/a.png"},
    "body": ["Alex", "A42"],
    "buttons": [{"index": 0, "url": "track/A42"}],
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
async def env() -> AsyncIterator[ProviderEnv]:
    engine = create_async_engine("sqlite+aiosqlite://")
    settings = Settings(allow_private_webhooks=True, public_url=PUBLIC_URL)
    yield ProviderEnv(settings=settings, engine=engine)
    await engine.dispose()


@pytest.fixture
async def made(env: ProviderEnv) -> AsyncIterator[Any]:
    providers: list[Any] = []

    async def make(kind: str, config: dict[str, Any]) -> Any:
        spec = ProviderSpec("t1", "wa", kind, "whatsapp", config)
        cls = WhatsappCloudProvider if kind == "whatsapp_cloud" else TwilioWhatsappProvider
        provider = cls(spec, env)
        await provider.start()
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


def delivery(content: dict[str, Any], to: Any = "+14155550100") -> Delivery:
    return Delivery(
        id="dlv_1",
        tenant="t1",
        notification="ntf_1",
        recipient="u-1",
        channel="whatsapp",
        to=to,
        content=content,
        priority="normal",
        attempt=1,
    )


# -- the Cloud API ------------------------------------------------------------------------


async def test_a_template_message_is_accepted_with_its_wamid(
    meta: WhatsappStandin, made: Any
) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    result = await provider.send(delivery(TEMPLATE))
    [message] = meta.received
    assert result.provider_message_id == message.id
    assert message.id.startswith("wamid.")
    assert message.body["messaging_product"] == "whatsapp"
    assert message.body["type"] == "template"


async def test_named_parameters_and_a_text_header(meta: WhatsappStandin, made: Any) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    part = {
        "template": "order_named",
        "language": "en_US",
        "header": {"type": "text", "text": "A42"},
        "body": {"first_name": "Alex", "order_id": "A42"},
    }
    await provider.send(delivery(part))
    header, body = meta.received[0].body["template"]["components"]
    assert header == {"type": "header", "parameters": [{"type": "text", "text": "A42"}]}
    assert body["parameters"][0] == {"type": "text", "parameter_name": "first_name", "text": "Alex"}


async def test_meta_components_are_sent_as_given(meta: WhatsappStandin, made: Any) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    components = [{"type": "body", "parameters": [{"type": "text", "text": "x"}] * 2}]
    part = {"template": "order_shipped", "language": "fr", "components": components}
    with pytest.raises(PermanentError) as caught:  # the header and the button are missing
        await provider.send(delivery(part))
    assert caught.value.reason == "template_rejected"
    assert "132000" in caught.value.message


@pytest.mark.parametrize("to", ["4155550100", "+0123", "", None, ["+14155550100"]])
async def test_a_number_not_in_e164_is_refused_before_sending(
    meta: WhatsappStandin, made: Any, to: Any
) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(delivery(TEMPLATE, to=to))
    assert caught.value.reason in ("invalid_address", "no_address")
    assert meta.refused == []
    assert meta.received == []


@pytest.mark.parametrize(
    "part",
    [
        {**TEMPLATE, "body": ["Alex", ""]},
        {**TEMPLATE, "header": {"type": "image", "link": "http://cdn.example.com/a.png"}},
        {"language": "en_US"},
    ],
)
async def test_a_part_that_cannot_make_a_message_is_a_render_error(
    meta: WhatsappStandin, made: Any, part: dict[str, Any]
) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(delivery(part))
    assert caught.value.reason == "render_error"
    assert meta.received == []


async def test_a_bad_access_token_is_permanent(meta: WhatsappStandin, made: Any) -> None:
    provider = await made("whatsapp_cloud", meta.config(access_token="EAAGnot-the-token"))
    with pytest.raises(PermanentError) as caught:
        await provider.send(delivery(TEMPLATE))
    assert caught.value.reason == "bad_credentials"
    assert "190" in caught.value.message


async def test_an_unknown_template_is_permanent(meta: WhatsappStandin, made: Any) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(delivery({"template": "nope", "language": "en_US"}))
    assert caught.value.reason == "template_rejected"
    assert "132001" in caught.value.message


async def test_a_429_with_retry_after_is_honoured(meta: WhatsappStandin, made: Any) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    meta.throttle_next(retry_after="7")
    with pytest.raises(TransientError) as caught:
        await provider.send(delivery(TEMPLATE))
    assert caught.value.retry_after == 7.0
    assert caught.value.reason == "rate_limited"
    result = await provider.send(delivery(TEMPLATE))  # the next try goes through
    assert result.provider_message_id == meta.received[0].id


# Meta's error codes, answered with HTTP 400 (401 for the token): reason, transient.
CODES = [
    (131047, "outside_window", False),
    (131026, "invalid_address", False),
    (131050, "opted_out", False),
    (130429, "rate_limited", True),
    (131056, "rate_limited", True),
    (131000, "service_error", True),
    (190, "bad_credentials", False),
    (132000, "template_rejected", False),
    (132001, "template_rejected", False),
    (133010, "account_problem", False),
    (131009, "provider_rejected", False),
]


@pytest.mark.parametrize(("code", "reason", "transient"), CODES)
async def test_meta_error_codes(
    meta: WhatsappStandin, made: Any, code: int, reason: str, transient: bool
) -> None:
    provider = await made("whatsapp_cloud", meta.config())
    meta.script(401 if code == 190 else 400, meta_error(code, f"Error {code}"))
    with pytest.raises(TransientError if transient else PermanentError) as caught:
        await provider.send(delivery(TEMPLATE))
    assert caught.value.reason == reason
    assert f"error {code}" in caught.value.message
    if transient:
        assert isinstance(caught.value, TransientError)
        assert caught.value.retry_after is None  # the retry schedule's backoff


async def test_meta_down_is_transient(meta: WhatsappStandin, made: Any) -> None:
    config = meta.config()
    await meta.close()
    provider = await made("whatsapp_cloud", config)
    with pytest.raises(TransientError) as caught:
        await provider.send(delivery(TEMPLATE))
    assert caught.value.reason == "connection_error"


# -- the webhook, read on its own -----------------------------------------------------------


def _config(meta: WhatsappStandin, **overrides: Any) -> dict[str, Any]:
    return meta.config(**overrides)


def _signed(meta: WhatsappStandin, body: bytes) -> dict[str, str]:
    return {"x-hub-signature-256": hub_signature(meta.app_secret, body)}


def test_the_signature_is_metas() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    assert signature("s3cret", body) == hub_signature("s3cret", body)
    assert signature("s3cret", body).startswith("sha256=")
    assert len(signature("s3cret", body)) == len("sha256=") + 64


async def test_statuses_become_reports(meta: WhatsappStandin) -> None:
    message = WaMessage("wamid.X", {"to": "+14155550100", "biz_opaque_callback_data": "dlv_9"})
    for status, code, expected in [
        ("delivered", None, ("delivered", None)),
        ("read", None, ("read", None)),
        ("failed", 131047, ("failed", "outside_window")),
        ("failed", 130429, ("failed", "provider_rejected")),
        ("failed", None, ("failed", "provider_rejected")),
    ]:
        body = meta.webhook(message, status, code)
        [report] = read_reports(_config(meta), body, _signed(meta, body))
        assert (report.status, report.reason) == expected
        assert (report.delivery_id, report.message_id) == ("dlv_9", "wamid.X")
    for status in ("sent", "deleted", "warning"):
        body = meta.webhook(message, status)
        assert read_reports(_config(meta), body, _signed(meta, body)) == []


async def test_statuses_without_a_delivery_are_left_out(meta: WhatsappStandin) -> None:
    for callback in ({}, {"biz_opaque_callback_data": "../../x"}, {"biz_opaque_callback_data": 7}):
        message = WaMessage("wamid.X", {"to": "+14155550100", **callback})
        body = meta.webhook(message, "delivered")
        assert read_reports(_config(meta), body, _signed(meta, body)) == []


async def test_a_webhook_is_read_up_to_a_bound(meta: WhatsappStandin) -> None:
    status = {"id": "wamid.X", "status": "delivered", "biz_opaque_callback_data": "dlv_1"}
    value = {"statuses": [status] * (MAX_STATUSES + 5)}
    body = orjson.dumps({"entry": [{"changes": [{"value": value}]}]})
    assert len(read_reports(_config(meta), body, _signed(meta, body))) == MAX_STATUSES


async def test_forged_or_unverifiable_webhooks_are_refused(meta: WhatsappStandin) -> None:
    body = meta.webhook(WaMessage("wamid.X", {"to": "+1415555010"}), "delivered")
    for headers in (
        {},
        {"x-hub-signature-256": hub_signature("other", body)},
        {"x-hub-signature-256": hub_signature(meta.app_secret, body + b" ")},
        {"x-hub-signature-256": hub_signature(meta.app_secret, body).removeprefix("sha256=")},
    ):
        with pytest.raises(ReportRefused):
            read_reports(_config(meta), body, headers)
    without_secret = {k: v for k, v in _config(meta).items() if k != "app_secret"}
    with pytest.raises(ReportRefused):
        read_reports(without_secret, body, _signed(meta, body))


def test_the_handshake_answers_only_its_token() -> None:
    config = {"phone_number_id": "1", "access_token": "t", "verify_token": "vt-1"}
    query = {"hub.mode": "subscribe", "hub.verify_token": "vt-1", "hub.challenge": "1158201444"}
    assert verify_subscription(config, query) == "1158201444"
    for bad in (
        {**query, "hub.verify_token": "vt-2"},
        {**query, "hub.mode": "unsubscribe"},
        {**query, "hub.challenge": "<b>"},
        {k: v for k, v in query.items() if k != "hub.challenge"},
    ):
        with pytest.raises(ReportRefused):
            verify_subscription(config, bad)
    no_token = {k: v for k, v in config.items() if k != "verify_token"}
    with pytest.raises(ReportRefused):
        verify_subscription(no_token, query)


# -- Twilio's WhatsApp sender -----------------------------------------------------------------


async def test_twilio_sends_a_content_template(twilio: TwilioStandin, made: Any) -> None:
    provider = await made("twilio_whatsapp", twilio.config())
    part = {**TEMPLATE, "content_sid": CONTENT_SID}
    result = await provider.send(delivery(part))
    [message] = twilio.received
    assert result.provider_message_id == message.sid
    assert message.form["To"] == "whatsapp:+14155550100"
    assert message.form["From"] == "whatsapp:+15005550006"
    assert orjson.loads(message.form["ContentVariables"]) == {"1": "Alex", "2": "A42"}
    assert message.status_callback == (
        f"{PUBLIC_URL}/v1/providers/wa/callbacks?tenant=t1&delivery=dlv_1"
    )


async def test_twilio_content_variables_and_a_messaging_service(
    twilio: TwilioStandin, made: Any
) -> None:
    service = "MG" + secrets.token_hex(16)
    provider = await made("twilio_whatsapp", twilio.config(**{"from": service}))
    part = {"content_sid": CONTENT_SID, "content_variables": {"1": "a", "2": "b"}}
    await provider.send(delivery(part))
    [message] = twilio.received
    assert message.form["MessagingServiceSid"] == service
    assert "From" not in message.form
    assert orjson.loads(message.form["ContentVariables"]) == {"1": "a", "2": "b"}


async def test_twilio_sends_text_as_body(twilio: TwilioStandin, made: Any) -> None:
    provider = await made("twilio_whatsapp", twilio.config())
    await provider.send(delivery({"template": "x", "language": "en", "text": "Shipped"}))
    assert twilio.received[0].form["Body"] == "Shipped"
    assert "ContentSid" not in twilio.received[0].form


@pytest.mark.parametrize(
    ("status", "code", "reason", "transient"),
    [
        (400, 63016, "outside_window", False),
        (400, 21655, "template_rejected", False),
        (400, 63007, "account_problem", False),
        (429, 63018, "rate_limited", True),
        (400, 21610, "opted_out", False),
    ],
)
async def test_twilio_whatsapp_error_codes(
    twilio: TwilioStandin, made: Any, status: int, code: int, reason: str, transient: bool
) -> None:
    provider = await made("twilio_whatsapp", twilio.config())
    twilio.fail_next(status, retry_after="3" if transient else None, code=code)
    with pytest.raises(TransientError if transient else PermanentError) as caught:
        await provider.send(delivery({"text": "Shipped"}))
    assert caught.value.reason == reason
    if isinstance(caught.value, TransientError):
        assert caught.value.retry_after == 3.0


async def test_twilio_refuses_a_content_sid_it_does_not_know(
    twilio: TwilioStandin, made: Any
) -> None:
    provider = await made("twilio_whatsapp", twilio.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(delivery({"content_sid": "HX" + "00" * 16, "body": ["a", "b"]}))
    assert caught.value.reason == "template_rejected"


def test_twilio_reports_read_and_failures_with_their_reason() -> None:
    config = {"account_sid": "AC" + "0a" * 16, "auth_token": "tok", "from": "+14155550100"}
    url = f"{PUBLIC_URL}/v1/providers/wa/callbacks?tenant=t1&delivery=dlv_1"

    def report(**params: str) -> Any:
        pairs = list({"MessageSid": "SM1", **params}.items())
        headers = {"x-twilio-signature": twilio_signature("tok", url, pairs)}
        return read_twilio_report(config, url, pairs, headers)

    assert report(MessageStatus="read").status == "read"
    assert report(MessageStatus="read").message_id == "SM1"
    assert report(MessageStatus="delivered").status == "delivered"
    failed = report(MessageStatus="undelivered", ErrorCode="63016")
    assert (failed.status, failed.reason) == ("failed", "outside_window")
    assert report(MessageStatus="failed", ErrorCode="30008").reason == "provider_rejected"
    assert report(MessageStatus="sent") is None
    with pytest.raises(ReportRefused):
        read_twilio_report(config, url, [("MessageStatus", "read")], {"x-twilio-signature": "x"})
