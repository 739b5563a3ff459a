"""Providers refuse endpoints on loopback and private addresses unless the deployment allows
them: a tenant's configuration must not make Clarion call its own network."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError
from clarion.providers.apns import ApnsProvider
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec
from clarion.providers.fcm import FcmProvider
from clarion.providers.sendgrid import SendgridProvider
from clarion.providers.ses import SesProvider
from clarion.providers.smtp import SmtpProvider
from harness import Harness
from standins.apns import p8_key, p8_pem
from standins.fcm import rsa_key

INTERNAL = "http://127.0.0.1:9"


def _service_account() -> dict[str, Any]:
    pem = rsa_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "sender@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


CASES: dict[str, tuple[type[Provider], str, dict[str, Any]]] = {
    "smtp": (SmtpProvider, "email", {"host": "127.0.0.1", "port": 2525, "from": "a@b.example"}),
    "ses": (
        SesProvider,
        "email",
        {
            "region": "eu-west-1",
            "access_key_id": "AKIA",
            "secret_access_key": "s",
            "from": "a@b.example",
            "base_url": INTERNAL,
        },
    ),
    "sendgrid": (
        SendgridProvider,
        "email",
        {"api_key": "SG.x", "from": "a@b.example", "base_url": INTERNAL},
    ),
    "fcm": (FcmProvider, "push", {"service_account": _service_account(), "base_url": INTERNAL}),
    "apns": (
        ApnsProvider,
        "push",
        {
            "team_id": "ABCDE12345",
            "key_id": "KEY1234567",
            "private_key": p8_pem(p8_key()),
            "topic": "com.example.app",
            "base_url": INTERNAL,
        },
    ),
}


def _message(channel: str) -> Delivery:
    to: Any = "u@example.com"
    content: dict[str, Any] = {"subject": "s", "text": "t"}
    if channel == "push":
        to = [{"platform": "apns", "token": "t1"}, {"platform": "fcm", "token": "t2"}]
        content = {"title": "t", "body": "b"}
    return Delivery(
        id="dlv_1",
        tenant="ten_1",
        notification="ntf_1",
        recipient="u",
        channel=channel,
        to=to,
        content=content,
        priority="normal",
        attempt=1,
        critical=True,
    )


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_an_internal_endpoint_is_refused(kind: str, lite: Harness) -> None:
    cls, channel, config = CASES[kind]
    spec = ProviderSpec(tenant_id="ten_1", name=kind, kind=kind, channel=channel, config=config)
    provider = cls(spec, ProviderEnv(settings=Settings(), engine=lite.ctx.engine))
    await provider.start()
    try:
        with pytest.raises(PermanentError) as refused:
            await provider.send(_message(channel))
    finally:
        await provider.aclose()
    assert refused.value.reason == "address_refused"
    assert "127.0.0.1" in refused.value.message
