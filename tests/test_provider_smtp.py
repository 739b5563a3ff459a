"""The SMTP provider against a local aiosmtpd relay."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from pydantic import ValidationError

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers import mime
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.configs import SmtpConfig
from clarion.providers.smtp import SmtpProvider
from clarion.security.unsubscribe import verify_token
from clarion.store.tenants import webhook_secrets
from harness import Harness, make_settings
from standins import serving
from standins.smtp import SmtpStandIn

PUBLIC = "https://clarion.example"
SUBJECT = "Votre commande été expédiée ✓ — 注文"


def outbound(harness: Harness, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": "dlv_0123456789abcdefghjkmnpqr",
        "tenant": harness.tenant_id,
        "notification": "ntf_1",
        "recipient": "u-1",
        "channel": "email",
        "to": "alex@example.com",
        "content": {
            "subject": SUBJECT,
            "html": "<p>Bonjour Alex, votre colis est parti.</p>",
            "text": "Bonjour Alex, votre colis est parti.",
        },
        "priority": "normal",
        "attempt": 1,
        "category": "marketing",
        "critical": False,
    }
    return Delivery(**{**fields, **overrides})


def provider(
    harness: Harness, server: SmtpStandIn, timeout: float = 10.0, **config: Any
) -> SmtpProvider:
    settings = make_settings(
        harness.settings.database_url, harness.settings.broker_url, public_url=PUBLIC
    )
    spec = ProviderSpec(
        tenant_id=harness.tenant_id,
        name="smtp-main",
        kind="smtp",
        channel="email",
        config={
            "host": "127.0.0.1",
            "port": server.port,
            "from": "Acme Café <no-reply@acme.test>",
            "tls": server.tls,
            **({"ca_pem": server.ca_pem} if server.tls != "none" else {}),
            **config,
        },
    )
    env = ProviderEnv(settings=settings, engine=harness.ctx.engine)
    return SmtpProvider(spec, env, timeout=timeout)


@pytest.fixture
async def relay() -> AsyncIterator[SmtpStandIn]:
    async with serving(SmtpStandIn()) as server:
        yield server


@pytest.fixture
async def secure_relay() -> AsyncIterator[SmtpStandIn]:
    async with serving(SmtpStandIn(tls="starttls", users={"acme": "s3cret"})) as server:
        yield server


async def send(smtp: SmtpProvider, message: Delivery) -> str | None:
    await smtp.start()
    try:
        return (await smtp.send(message)).provider_message_id
    finally:
        await smtp.aclose()


async def configure_smtp(harness: Harness, relay: SmtpStandIn) -> None:
    """The tenant's email goes through ``relay``, configured over the API."""
    response = await harness.client.put(
        "/v1/providers/smtp-main",
        json={
            "channel": "email",
            "kind": "smtp",
            "config": {
                "host": "127.0.0.1",
                "port": relay.port,
                "from": "Acme <no-reply@acme.test>",
                "tls": "none",
            },
        },
        headers=harness.auth,
    )
    assert response.status_code in (200, 201), response.text


def parts(received: EmailMessage) -> list[tuple[str, str]]:
    return [(part.get_content_type(), text_of(part)) for part in received.iter_parts()]


def text_of(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


async def test_marketing_email_is_multipart_with_one_click_unsubscribe(
    lite: Harness, relay: SmtpStandIn
) -> None:
    message_id = await send(provider(lite, relay), outbound(lite))

    [got] = relay.received
    assert got.mail_from == "no-reply@acme.test"
    assert got.rcpt_tos == ["alex@example.com"]
    msg = got.message
    assert msg.get_content_type() == "multipart/alternative"
    assert parts(msg) == [
        ("text/plain", "Bonjour Alex, votre colis est parti.\n"),
        ("text/html", "<p>Bonjour Alex, votre colis est parti.</p>\n"),
    ]
    assert all(part.get_content_charset() == "utf-8" for part in msg.iter_parts())
    assert msg["Subject"] == SUBJECT
    assert SUBJECT.encode() not in got.data  # encoded words on the wire, not raw UTF-8
    assert msg["From"].addresses[0].display_name == "Acme Café"
    assert msg["To"] == "alex@example.com"
    assert msg["Message-ID"] == message_id
    assert "dlv_0123456789abcdefghjkmnpqr" in message_id
    assert message_id.endswith("@acme.test>")
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["X-Clarion-Delivery-Id"] == "dlv_0123456789abcdefghjkmnpqr"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    url = msg["List-Unsubscribe"]
    # On one line as written: mail clients read no encoded words in this header.
    assert f"\r\nList-Unsubscribe: {url}\r\n".encode() in got.data
    prefix = f"<{PUBLIC}/v1/unsubscribe/"
    assert url.startswith(prefix)
    assert url.endswith(">")
    target = await verify_token(webhook_secrets(lite.ctx.engine), url[len(prefix) : -1])
    assert target is not None
    assert (target.tenant_id, target.recipient_id, target.category) == (
        lite.tenant_id,
        "u-1",
        "marketing",
    )


@pytest.mark.parametrize(
    "overrides", [{"category": "security", "critical": True}, {"category": None}]
)
async def test_critical_or_uncategorised_email_has_no_unsubscribe(
    lite: Harness, relay: SmtpStandIn, overrides: dict[str, Any]
) -> None:
    await send(provider(lite, relay), outbound(lite, **overrides))
    msg = relay.received[0].message
    assert "List-Unsubscribe" not in msg
    assert "List-Unsubscribe-Post" not in msg
    assert msg["X-Clarion-Delivery-Id"] == "dlv_0123456789abcdefghjkmnpqr"


async def test_a_return_path_is_the_envelope_sender(lite: Harness, relay: SmtpStandIn) -> None:
    """Bounces go to the return-path mailbox; the reader still sees the `from`."""
    await send(provider(lite, relay, return_path="bounces@acme.test"), outbound(lite))
    [got] = relay.received
    assert got.mail_from == "bounces@acme.test"
    assert got.message["From"] == "Acme Café <no-reply@acme.test>"


@pytest.mark.parametrize(
    "return_path", ["Bounces <bounces@acme.test>", "not an address", "a@b.test\r\nX: y", ""]
)
def test_a_return_path_is_one_bare_address(return_path: str) -> None:
    with pytest.raises(ValidationError):
        SmtpConfig.model_validate(
            {"host": "127.0.0.1", "from": "no-reply@acme.test", "return_path": return_path}
        )


async def test_text_only_email_is_a_single_part(lite: Harness, relay: SmtpStandIn) -> None:
    content = {"subject": "Plain", "text": "Line one\nLigne deux é"}
    await send(provider(lite, relay), outbound(lite, content=content))
    msg = relay.received[0].message
    assert msg.get_content_type() == "text/plain"
    assert text_of(msg) == "Line one\nLigne deux é\n"


async def test_starttls_with_auth(lite: Harness, secure_relay: SmtpStandIn) -> None:
    smtp = provider(lite, secure_relay, username="acme", password="s3cret")
    await send(smtp, outbound(lite))
    [got] = secure_relay.received
    assert got.tls
    assert got.user == "acme"


async def test_implicit_tls(lite: Harness) -> None:
    server = await SmtpStandIn(tls="implicit", users={"acme": "s3cret"}).start()
    try:
        await send(provider(lite, server, username="acme", password="s3cret"), outbound(lite))
    finally:
        await server.close()
    assert len(server.received) == 1


async def test_untrusted_certificate_is_refused(lite: Harness, secure_relay: SmtpStandIn) -> None:
    other_ca = SmtpStandIn().ca_pem
    smtp = provider(lite, secure_relay, username="acme", password="s3cret", ca_pem=other_ca)
    with pytest.raises(TransientError):
        await send(smtp, outbound(lite))
    assert secure_relay.received == []


@pytest.mark.parametrize(
    "credentials", [{"username": "acme", "password": "wrong"}, {}], ids=["wrong", "none"]
)
async def test_bad_credentials_are_permanent(
    lite: Harness, secure_relay: SmtpStandIn, credentials: dict[str, str]
) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, secure_relay, **credentials), outbound(lite))
    assert caught.value.reason == "bad_credentials"
    assert secure_relay.received == []


async def test_refused_mailbox_is_permanent_invalid_address(
    lite: Harness, relay: SmtpStandIn
) -> None:
    relay.refuse["gone@example.com"] = "550 5.1.1 Mailbox unavailable"
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, relay), outbound(lite, to="gone@example.com"))
    assert caught.value.reason == "invalid_address"
    assert "550" in caught.value.message


async def test_4xx_is_transient_and_the_connection_is_kept(
    lite: Harness, relay: SmtpStandIn
) -> None:
    relay.refuse["busy@example.com"] = "450 4.2.1 Mailbox busy, try later"
    smtp = provider(lite, relay)
    await smtp.start()
    try:
        with pytest.raises(TransientError) as caught:
            await smtp.send(outbound(lite, to="busy@example.com"))
        await smtp.send(outbound(lite))
    finally:
        await smtp.aclose()
    assert caught.value.reason == "smtp_450"
    assert len(relay.received) == 1
    assert relay.connections == 1


@pytest.mark.parametrize("to", ["not-an-address", "a@b@c.com", None, "x\r\n@evil.com"])
async def test_unusable_address_is_permanent(lite: Harness, relay: SmtpStandIn, to: Any) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, relay), outbound(lite, to=to))
    assert caught.value.reason == "invalid_address"
    assert relay.connections == 0


async def test_connections_are_pooled_and_a_dropped_one_is_replaced(
    lite: Harness, relay: SmtpStandIn
) -> None:
    smtp = provider(lite, relay, pool_size=1)
    await smtp.start()
    try:
        await smtp.send(outbound(lite))
        await smtp.send(outbound(lite))
        assert relay.connections == 1
        await relay.drop_connections()
        await smtp.send(outbound(lite))
    finally:
        await smtp.aclose()
    assert relay.connections == 2
    assert len(relay.received) == 3


async def test_a_relay_gone_after_the_drop_is_transient(lite: Harness, relay: SmtpStandIn) -> None:
    smtp = provider(lite, relay)
    await smtp.start()
    try:
        await smtp.send(outbound(lite))
        await relay.close()  # drops the pooled connection and stops listening
        with pytest.raises(TransientError) as caught:
            await smtp.send(outbound(lite))
    finally:
        await smtp.aclose()
    assert caught.value.reason == "connection_error"
    assert len(relay.received) == 1


async def test_concurrent_sends_use_at_most_pool_size_connections(
    lite: Harness, relay: SmtpStandIn
) -> None:
    smtp = provider(lite, relay, pool_size=2)
    await smtp.start()
    try:
        await asyncio.gather(*(smtp.send(outbound(lite)) for _ in range(10)))
    finally:
        await smtp.aclose()
    assert len(relay.received) == 10
    assert relay.connections <= 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_server_down_is_transient(lite: Harness) -> None:
    down = SmtpStandIn(port=free_port())  # never started
    with pytest.raises(TransientError) as caught:
        await send(provider(lite, down), outbound(lite))
    assert caught.value.reason == "connection_error"


async def test_silent_server_times_out_as_transient(lite: Harness) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    stand = SmtpStandIn(port=silent.sockets[0].getsockname()[1])
    smtp = provider(lite, stand, timeout=0.2)  # the greeting never comes
    try:
        with pytest.raises(TransientError) as caught:
            await send(smtp, outbound(lite))
    finally:
        for w in writers:
            w.close()
        silent.close()
        await silent.wait_closed()
    assert caught.value.reason == "timeout"


async def test_end_to_end_through_the_api_then_one_click_unsubscribe(
    lite: Harness, relay: SmtpStandIn
) -> None:
    """Configure SMTP over the API, send, receive it at the relay; the email's own
    unsubscribe link then turns marketing email off for that recipient."""
    await configure_smtp(lite, relay)
    await lite.put_recipient("u-1", email="alex@example.com", data={"firstName": "Zoë"})
    await lite.put_template(
        "promo",
        {
            "category": "marketing",
            "channels": {
                "email": {
                    "subject": "Soldes d'été, {{ firstName }} ✓",
                    "html": "<p>Bonjour {{ firstName }}</p>",
                    "text": "Bonjour {{ firstName }}",
                }
            },
        },
    )

    sent = await lite.send({"template": "promo", "to": {"recipient_id": "u-1"}})
    assert sent.status_code == 202, sent.text
    await lite.drain()

    [delivery] = (await lite.notification(sent.json()["id"]))["deliveries"]
    assert (delivery["status"], delivery["provider"]) == ("sent", "smtp-main")
    [got] = relay.received
    msg = got.message
    assert msg["Subject"] == "Soldes d'été, Zoë ✓"
    assert msg["X-Clarion-Delivery-Id"] == delivery["id"]
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]

    link = msg["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{lite.settings.public_url}/v1/unsubscribe/")
    one_click = await lite.client.post(
        link.removeprefix(lite.settings.public_url),
        content=msg["List-Unsubscribe-Post"].encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200, one_click.text

    again = await lite.send({"template": "promo", "to": {"recipient_id": "u-1"}})
    await lite.drain()
    [second] = (await lite.notification(again.json()["id"]))["deliveries"]
    assert (second["status"], second["reason"]) == ("suppressed", "opted_out")
    assert len(relay.received) == 1


def test_a_message_id_is_unique_per_attempt_and_never_folded() -> None:
    """The header fits on its own first line (78 characters with `Message-ID: `) for a
    domain of up to 24 characters, so no receiver sees it folded."""
    delivery = "dlv_0123456789abcdefghjkmnpqrs"  # as long as a delivery id
    first, second = mime.message_id(delivery, "x" * 24), mime.message_id(delivery, "x" * 24)
    assert first != second
    assert first.startswith(f"<{delivery}.")
    assert len(f"Message-ID: {first}") <= 78
