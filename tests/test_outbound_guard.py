"""Outbound requests follow no redirect, read bounded answers, and connect only to the
address the guard checked: no SSRF through a 3xx, through DNS rebinding, or through an
IPv6 form that embeds an internal IPv4 address."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from aiohttp import web

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError
from clarion.providers.apns import ApnsProvider
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.fcm import FcmProvider
from clarion.providers.sendgrid import SendgridProvider
from clarion.providers.smtp import SmtpProvider
from clarion.providers.webhook import WebhookProvider
from clarion.security.netguard import AddressGuard, is_public
from harness import Harness
from standins import serving
from standins.apns import p8_key, p8_pem
from standins.fcm import FcmStandin
from standins.smtp import SmtpStandIn

SECRET = "SECRET-INTERNAL-ANSWER"


class Redirector:
    """Answers every endpoint with a redirect to its own /internal, which records hits."""

    def __init__(self) -> None:
        self.internal_hits = 0
        self.hits: list[str] = []
        self.status = 302
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/internal", self._internal)
        app.router.add_route("*", "/{tail:.*}", self._redirect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path == "/token":
            return web.json_response({"access_token": "ya29.x", "expires_in": 3600})
        return web.Response(status=self.status, headers={"Location": f"{self.url}/internal"})

    async def _internal(self, request: web.Request) -> web.Response:
        self.internal_hits += 1
        return web.Response(status=500, text=SECRET)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def redirector() -> AsyncIterator[Redirector]:
    async with serving(Redirector()) as server:
        yield server


def outbound(channel: str, to: Any, content: dict[str, Any]) -> Delivery:
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


def push(*platforms: str) -> Delivery:
    tokens = [{"platform": p, "token": f"tok-{p}"} for p in platforms]
    return outbound("push", tokens, {"title": "t", "body": "b"})


def hook(url: str) -> Delivery:
    return outbound("webhook", url, {"body": {"n": 1}})


def email() -> Delivery:
    return outbound("email", "u@example.com", {"subject": "s", "text": "t"})


def env(allow_private: bool, engine: Any = None) -> ProviderEnv:
    return ProviderEnv(settings=Settings(allow_private_webhooks=allow_private), engine=engine)


async def secret(tenant: str) -> str:
    return "s3cret"


async def refused(send: Callable[[], Any]) -> ProviderError:
    try:
        await send()
    except ProviderError as exc:
        return exc
    raise AssertionError("the send succeeded")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "::127.0.0.1",  # IPv4-compatible
        "::a00:1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::808:808",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "ff02::1",
        "not an address",
    ],
)
def test_non_public_forms_are_refused(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_forms_pass(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]/x",
        "http://[::ffff:7f00:1]/x",
        "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://169.254.169.254/",
        "http://[::1]:8080/",
    ],
)
async def test_an_internal_literal_is_refused_before_connecting(url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        await AddressGuard(allow_private=False).check(url)
    assert caught.value.reason == "address_refused"


class Resolutions:
    """Stands in for DNS: answers each lookup of ``rebind.test`` with the next address."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "rebind.test"
        address = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Resolutions]:
    def install(*answers: str) -> Resolutions:
        resolutions = Resolutions(*answers)
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", resolutions.getaddrinfo)
        return resolutions

    return install


async def test_dns_rebinding_gains_nothing(
    redirector: Redirector, dns: Callable[..., Resolutions]
) -> None:
    """The name answers a public address first and loopback after: the one connection made
    goes to the first answer, never to the second (a guard that resolved separately from
    the connection would have checked the first and connected to the second)."""
    port = redirector.url.rsplit(":", 1)[1]
    resolutions = dns("8.8.8.8", "127.0.0.1")  # public, unreachable on that port
    provider = WebhookProvider(secret, allow_private=False, timeout=0.5)
    await provider.start()
    try:
        error = await refused(lambda: provider.send(hook(f"http://rebind.test:{port}/hook")))
    finally:
        await provider.aclose()
    assert redirector.hits == []
    assert resolutions.lookups == 1
    assert error.reason in ("timeout", "connection_error", "address_refused")


async def test_a_name_resolving_to_loopback_is_refused_at_connect(
    redirector: Redirector, dns: Callable[..., Resolutions]
) -> None:
    port = redirector.url.rsplit(":", 1)[1]
    dns("127.0.0.1")
    provider = WebhookProvider(secret, allow_private=False)
    await provider.start()
    try:
        error = await refused(lambda: provider.send(hook(f"http://rebind.test:{port}/hook")))
    finally:
        await provider.aclose()
    assert error.reason == "address_refused"
    assert "127.0.0.1" in error.message
    assert redirector.hits == []


async def test_smtp_connects_to_the_checked_address(
    lite: Harness, dns: Callable[..., Resolutions]
) -> None:
    relay = await SmtpStandIn().start()
    try:
        resolutions = dns("127.0.0.1")
        config = {"host": "rebind.test", "port": relay.port, "from": "a@acme.test", "tls": "none"}
        for allow_private in (False, True):
            spec = ProviderSpec(
                tenant_id="ten_1", name="smtp", kind="smtp", channel="email", config=config
            )
            smtp = SmtpProvider(spec, env(allow_private, lite.ctx.engine), timeout=5)
            await smtp.start()
            message = email()
            try:
                if allow_private:
                    await smtp.send(message)
                else:
                    error = await refused(lambda: smtp.send(message))  # noqa: B023
                    assert error.reason == "address_refused"
            finally:
                await smtp.aclose()
        assert len(relay.received) == 1
        assert resolutions.lookups == 2
    finally:
        await relay.close()


async def test_apns_connects_only_to_checked_addresses(dns: Callable[..., Resolutions]) -> None:
    dns("127.0.0.1")
    config = {
        "team_id": "ABCDE12345",
        "key_id": "KEY1234567",
        "private_key": p8_pem(p8_key()),
        "topic": "com.example.app",
        "base_url": "http://rebind.test:9",
    }
    spec = ProviderSpec(tenant_id="ten_1", name="apns", kind="apns", channel="push", config=config)
    apns = ApnsProvider(spec, env(False))
    await apns.start()
    try:
        error = await refused(lambda: apns.send(push("apns")))
    finally:
        await apns.aclose()
    assert error.reason == "address_refused"


@pytest.mark.parametrize(
    ("endpoint", "status"),
    [*(("token", code) for code in (301, 302, 303, 307, 308)), ("send", 302), ("send", 307)],
)
async def test_fcm_follows_no_redirect(redirector: Redirector, endpoint: str, status: int) -> None:
    """From the OAuth token endpoint or from the send endpoint (the token is then real)."""
    redirector.status = status
    account = FcmStandin().service_account()
    token_path = "/oauth-token" if endpoint == "token" else "/token"
    account["token_uri"] = f"{redirector.url}{token_path}"
    config = {"service_account": account, "base_url": redirector.url}
    spec = ProviderSpec(tenant_id="ten_1", name="fcm", kind="fcm", channel="push", config=config)
    fcm = FcmProvider(spec, env(True))
    await fcm.start()
    try:
        error = await refused(lambda: fcm.send(push("fcm")))
    finally:
        await fcm.aclose()
    assert redirector.hits[0] == token_path
    assert error.reason == "redirect_refused"
    assert f"{redirector.url}/internal" in error.message
    assert SECRET not in error.message
    assert redirector.internal_hits == 0


async def test_webhooks_and_http_providers_follow_no_redirect(redirector: Redirector) -> None:
    webhook = WebhookProvider(secret, allow_private=True)
    spec = ProviderSpec(
        tenant_id="ten_1",
        name="sg",
        kind="sendgrid",
        channel="email",
        config={"api_key": "SG.x", "from": "a@acme.test", "base_url": redirector.url},
    )
    sendgrid = SendgridProvider(spec, env(True, cast(Any, None)))
    await webhook.start()
    await sendgrid.start()
    try:
        errors = [
            await refused(lambda: webhook.send(hook(f"{redirector.url}/hook"))),
            await refused(lambda: sendgrid.send(email())),
        ]
    finally:
        await webhook.aclose()
        await sendgrid.aclose()
    assert [e.reason for e in errors] == ["redirect_refused", "redirect_refused"]
    assert redirector.internal_hits == 0
