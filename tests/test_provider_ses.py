"""The SES provider against a local SES v2 endpoint that verifies SigV4 signatures."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.ses import SesProvider
from harness import Harness, make_settings
from standins import serving
from standins.ses import PATH, SesError, SesStandIn

PUBLIC = "https://clarion.example"
SUBJECT = "Ihre Bestellung wurde versandt — Größe ✓"


def outbound(harness: Harness, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": "dlv_sesdelivery0000000000001",
        "tenant": harness.tenant_id,
        "notification": "ntf_1",
        "recipient": "u-1",
        "channel": "email",
        "to": "alex@example.com",
        "content": {"subject": SUBJECT, "html": "<p>Hallo</p>", "text": "Hallo"},
        "priority": "normal",
        "attempt": 1,
        "category": "marketing",
    }
    return Delivery(**{**fields, **overrides})


def provider(harness: Harness, ses: SesStandIn, **config: Any) -> SesProvider:
    settings = make_settings(
        harness.settings.database_url, harness.settings.broker_url, public_url=PUBLIC
    )
    spec = ProviderSpec(
        tenant_id=harness.tenant_id,
        name="ses-main",
        kind="ses",
        channel="email",
        config={
            "region": ses.region,
            "access_key_id": "AKIDSTANDIN",
            "secret_access_key": "standin-secret",
            "from": "Acme <no-reply@acme.test>",
            "base_url": ses.url,
            **config,
        },
    )
    return SesProvider(spec, ProviderEnv(settings=settings, engine=harness.ctx.engine))


@pytest.fixture
async def ses() -> AsyncIterator[SesStandIn]:
    async with serving(SesStandIn()) as server:
        yield server


async def send(provider: SesProvider, message: Delivery) -> str | None:
    await provider.start()
    try:
        return (await provider.send(message)).provider_message_id
    finally:
        await provider.aclose()


async def test_sends_the_raw_mime_message_signed(lite: Harness, ses: SesStandIn) -> None:
    message_id = await send(provider(lite, ses), outbound(lite))

    [sent] = ses.sent
    assert message_id is not None
    assert message_id.startswith("0102")
    assert sent.body["FromEmailAddress"] == "no-reply@acme.test"
    assert sent.body["Destination"] == {"ToAddresses": ["alex@example.com"]}
    assert sent.body["EmailTags"] == [
        {"Name": "clarion_delivery_id", "Value": "dlv_sesdelivery0000000000001"}
    ]
    msg = sent.message
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == SUBJECT
    assert msg["From"] == "Acme <no-reply@acme.test>"
    assert msg["X-Clarion-Delivery-Id"] == "dlv_sesdelivery0000000000001"
    assert msg["List-Unsubscribe"].startswith(f"<{PUBLIC}/v1/unsubscribe/v1.")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"]
    assert msg["Date"]


async def test_critical_email_has_no_unsubscribe(lite: Harness, ses: SesStandIn) -> None:
    await send(provider(lite, ses), outbound(lite, category="security", critical=True))
    assert "List-Unsubscribe" not in ses.sent[0].message


@pytest.mark.parametrize(
    "config",
    [
        {"secret_access_key": "not-the-secret"},
        {"access_key_id": "AKIDUNKNOWN"},
        {"region": "us-east-1"},  # signed for another region than the endpoint's
    ],
    ids=["wrong-secret", "unknown-key", "wrong-region"],
)
async def test_refused_signature_is_bad_credentials(
    lite: Harness, ses: SesStandIn, config: dict[str, str]
) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, ses, **config), outbound(lite))
    assert caught.value.reason == "bad_credentials"
    assert ses.sent == []


async def test_unverified_sender_is_permanent(lite: Harness, ses: SesStandIn) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, ses, **{"from": "x@unverified.test"}), outbound(lite))
    assert caught.value.reason == "provider_rejected"
    assert "MessageRejected" in caught.value.message
    assert "not verified" in caught.value.message


async def test_rejected_recipient_is_permanent(lite: Harness, ses: SesStandIn) -> None:
    ses.reject["bad@example.com"] = SesError(400, "BadRequestException", "Illegal address")
    with pytest.raises(PermanentError) as caught:
        await send(provider(lite, ses), outbound(lite, to="bad@example.com"))
    assert caught.value.reason == "provider_rejected"
    assert "Illegal address" in caught.value.message


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (SesError(429, "TooManyRequestsException", "Too many requests"), None),
        (SesError(429, "TooManyRequestsException", "slow down", {"Retry-After": "7"}), 7.0),
        (SesError(400, "LimitExceededException", "Maximum sending rate exceeded."), None),
        (SesError(500, "InternalFailure", "internal error"), None),
        (SesError(503, "ServiceUnavailable", "try later", {"Retry-After": "3"}), 3.0),
    ],
    ids=["429", "429-retry-after", "limit-exceeded", "500", "503"],
)
async def test_throttling_and_outages_are_transient(
    lite: Harness, ses: SesStandIn, error: SesError, retry_after: float | None
) -> None:
    ses.upcoming.append(error)
    client = provider(lite, ses)
    await client.start()
    try:
        with pytest.raises(TransientError) as caught:
            await client.send(outbound(lite))
        assert caught.value.retry_after == retry_after
        await client.send(outbound(lite))  # the next attempt goes through
    finally:
        await client.aclose()
    assert len(ses.sent) == 1


async def test_server_down_is_transient(lite: Harness) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = SesStandIn(port=sock.getsockname()[1])  # nothing listens there
    with pytest.raises(TransientError) as caught:
        await send(provider(lite, down), outbound(lite))
    assert caught.value.reason == "connection_error"


async def test_default_endpoint_is_the_regional_one(lite: Harness, ses: SesStandIn) -> None:
    spec = ProviderSpec(
        tenant_id=lite.tenant_id,
        name="ses",
        kind="ses",
        channel="email",
        config={
            "region": "eu-central-1",
            "access_key_id": "AK",
            "secret_access_key": "s",
            "from": "a@acme.test",
        },
    )
    ses_provider = SesProvider(spec, ProviderEnv(settings=lite.settings, engine=lite.ctx.engine))
    assert ses_provider._url == "https://email.eu-central-1.amazonaws.com/v2/email/outbound-emails"


async def test_the_standin_refuses_a_tampered_body(ses: SesStandIn) -> None:
    """The stand-in's check is real: a body changed after signing is refused."""
    url = ses.url + PATH
    body = orjson.dumps({"Content": {"Raw": {"Data": "eA=="}}})
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials("AKIDSTANDIN", "standin-secret"), "ses", ses.region).add_auth(request)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=body.replace(b"eA==", b"eQ=="), headers=dict(request.headers.items())
        ) as response:
            assert response.status == 403
            assert response.headers["x-amzn-ErrorType"].startswith("SignatureDoesNotMatch")
        async with session.post(url, data=body, headers=dict(request.headers.items())) as ok:
            # Signed and unchanged: past the signature, refused only for its content.
            assert ok.status == 400
            assert ok.headers["x-amzn-ErrorType"].startswith("MessageRejected")
