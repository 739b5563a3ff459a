"""Outbound requests through an HTTP proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``,
or a provider's own ``proxy``): every HTTP provider kind, webhooks and status webhooks go
through a real ``CONNECT`` proxy (tests/standins/proxy.py); ``NO_PROXY`` sends direct; the
proxy's credentials are sent and a refusal is a clear error; and the address guard still
checks the destination, never the proxy's own lookup."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import create_async_engine

from clarion import cli
from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.domain.proxies import parse_no_proxy, parse_proxy, provider_proxies
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net import HttpClient
from clarion.providers import registry
from clarion.providers.apns import ApnsProvider
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec
from clarion.providers.configs import SendgridConfig
from clarion.providers.fcm import FcmProvider
from clarion.providers.kinds import KINDS
from clarion.providers.sendgrid import SendgridProvider
from clarion.providers.ses import SesProvider
from clarion.providers.twilio import TwilioProvider
from clarion.providers.webhook import WebhookProvider
from clarion.providers.webpush import WebpushProvider
from clarion.security.netguard import AddressGuard
from harness import make_settings, running
from standins import serving
from standins.apns import ApnsStandin
from standins.discord import DiscordStandin
from standins.fcm import FcmStandin
from standins.google_chat import GoogleChatStandin
from standins.mattermost import MattermostStandin
from standins.proxy import ConnectProxy
from standins.sendgrid import SendgridStandIn
from standins.ses import SesStandIn
from standins.slack import SlackStandin
from standins.teams import TeamsStandin
from standins.telegram import TelegramStandin
from standins.twilio import TwilioStandin
from standins.webpush import PushService, vapid_keys
from standins.whatsapp import WhatsappStandin
from webhook_sink import WebhookSink

PASSWORD = "pa:ss@w0rd"  # needs percent-encoding in a URL
QUOTED = "pa%3Ass%40w0rd"
PUSH_CONTENT = {"title": "Shipped", "body": "Order 42 is on its way"}

# -- the rules: proxy URLs, NO_PROXY, the settings --------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "credentials"),
    [
        ("http://proxy.corp:3128", "proxy.corp", 3128, None),
        ("proxy.corp:8080", "proxy.corp", 8080, None),
        ("http://PROXY.corp/", "proxy.corp", 80, None),
        (f"http://clarion:{QUOTED}@10.0.0.5:3128", "10.0.0.5", 3128, f"clarion:{PASSWORD}"),
        ("http://[::1]:3128", "::1", 3128, None),
    ],
)
def test_proxy_urls(url: str, host: str, port: int, credentials: str | None) -> None:
    proxy = parse_proxy(url)
    assert (proxy.host, proxy.port) == (host, port)
    if credentials is None:
        assert proxy.authorization is None
    else:
        assert proxy.authorization == f"Basic {base64.b64encode(credentials.encode()).decode()}"
        assert PASSWORD not in repr(proxy)


@pytest.mark.parametrize(
    "url",
    [
        "https://u:hunter2@proxy:3128",
        "socks5://u:hunter2@proxy:1080",
        "http://u:hunter2@:3128",
        "http://u:hunter2@proxy:99999",
        "http://u:hunter2@proxy:3128/path",
        "http://u:hunter2@pro xy:3128",
        "http://u:hunter2@pro!xy:3128",
    ],
)
def test_a_malformed_proxy_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="prox") as caught:
        parse_proxy(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("EXAMPLE.com.", "api.example.com", 443, True),
        ("example.com:8443", "example.com", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.0.0.1", 80, False),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.1", "localhost", 80, False),  # names are not resolved to match
        ("::1", "::1", 443, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 80, False),
        ("fd00::/8", "fd12::1", 443, True),
        ("*", "anything.test", 1, True),
        ("a.test, b.test  c.test", "c.test", 80, True),
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert parse_no_proxy(no_proxy).matches(host, port) is direct


@pytest.mark.parametrize("no_proxy", ["a/b", "example.com:99999", "ex!ample.com", "[::1"])
def test_a_malformed_no_proxy_is_refused(no_proxy: str) -> None:
    with pytest.raises(ValueError, match="NO_PROXY"):
        parse_no_proxy(no_proxy)


def test_settings_read_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:3128")
    monkeypatch.setenv("https_proxy", "http://lower:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain:8080")
    monkeypatch.setenv("NO_PROXY", "internal.corp")
    proxies = Settings().proxies
    assert proxies.https is not None
    assert proxies.https.host == "lower"
    assert proxies.http is not None
    assert proxies.http.host == "plain"
    assert proxies.select("https", "api.internal.corp", 443) is None
    # Clarion's own setting wins, even empty (direct while the host's tools use a proxy).
    monkeypatch.setenv("CLARION_HTTPS_PROXY", "")
    assert Settings().proxies.https is None


def test_a_malformed_proxy_fails_startup_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "ftp://clarion:hunter2@proxy.corp:3128")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "https_proxy" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert cli.main(["migrate"]) == 2
    said = capsys.readouterr().err
    assert "https_proxy" in said
    assert "only http:// proxies" in said
    assert "hunter2" not in said


def test_a_provider_may_name_its_own_proxy() -> None:
    base = {"api_key": "SG.x", "from": "a@acme.test"}
    assert SendgridConfig.model_validate({**base, "proxy": "http://p.corp:3128"}).proxy
    assert SendgridConfig.model_validate({**base, "proxy": "none"}).proxy == "none"
    with pytest.raises(ValidationError) as caught:
        SendgridConfig.model_validate({**base, "proxy": "socks5://u:hunter2@p:1080"})
    # What the API answers: the message, which does not repeat the password.
    [error] = caught.value.errors()
    assert "only http:// proxies" in error["msg"]
    assert "hunter2" not in error["msg"]
    # Sealed at rest and shown as "***", as a proxy URL may hold a password.
    for kind in ("ses", "sendgrid", "twilio", "fcm", "apns", "webpush"):
        assert "proxy" in KINDS[kind].secret_fields
    direct = provider_proxies("none")
    assert direct.select("https", "api.sendgrid.com", 443) is None
    assert not direct.trusted


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with serving(ConnectProxy()) as server:
        yield server


@pytest.fixture
async def engine() -> AsyncIterator[Any]:
    made = create_async_engine("sqlite+aiosqlite://")
    yield made
    await made.dispose()


def via(proxy: ConnectProxy | str, **overrides: Any) -> Settings:
    """Settings whose requests go through ``proxy``, private addresses allowed (the
    stand-ins are on 127.0.0.1)."""
    url = proxy if isinstance(proxy, str) else proxy.url
    fields = {"allow_private_webhooks": True, "https_proxy": url, "http_proxy": url}
    return Settings(**{"no_proxy": "", **fields, **overrides})


def env_of(settings: Settings, engine: Any = None) -> ProviderEnv:
    return ProviderEnv(settings=settings, engine=engine)


def spec(kind: str, channel: str, config: dict[str, Any]) -> ProviderSpec:
    return ProviderSpec(tenant_id="t1", name=kind, kind=kind, channel=channel, config=config)


def delivery(channel: str, to: Any, content: dict[str, Any], **fields: Any) -> Delivery:
    return Delivery(
        id="dlv_proxied00000000000000001",
        tenant="t1",
        notification="ntf_1",
        recipient="u-1",
        channel=channel,
        to=to,
        content=content,
        priority="normal",
        attempt=1,
        **fields,
    )


def sms() -> Delivery:
    return delivery("sms", "+14155550100", {"text": "Order 42 shipped"})


def email() -> Delivery:
    content = {"subject": "Shipped", "text": "Order 42", "html": "<p>Order 42</p>"}
    return delivery("email", "alex@example.com", content, category="security", critical=True)


def push(platform: str, token: str = "tok-1") -> Delivery:
    return delivery("push", [{"platform": platform, "token": token}], PUSH_CONTENT)


async def sent(provider: Provider, message: Delivery) -> None:
    await provider.start()
    try:
        await provider.send(message)
    finally:
        await provider.aclose()


async def refused(provider: Provider, message: Delivery) -> ProviderError:
    await provider.start()
    try:
        await provider.send(message)
    except ProviderError as exc:
        return exc
    finally:
        await provider.aclose()
    raise AssertionError("the send went through")


def at(port: int) -> str:
    return f"127.0.0.1:{port}"


async def secret_of(tenant: str) -> str:
    return "s3cret-s3cret"


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], list[str]]:
    """Makes the given names resolve to the given addresses (for Clarion and the proxy
    alike); other names resolve as usual. Returns the names looked up."""

    def install(table: dict[str, str]) -> list[str]:
        lookups: list[str] = []
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host in table:
                lookups.append(host)
                address = table[host]
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
            return await real(host, port, *args, **kwargs)

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        return lookups

    return install


# -- every HTTP provider kind through the proxy ------------------------------------------


async def test_twilio_through_the_proxy(proxy: ConnectProxy, engine: Any) -> None:
    async with serving(TwilioStandin()) as twilio:
        await sent(
            TwilioProvider(spec("twilio", "sms", twilio.config()), env_of(via(proxy), engine)),
            sms(),
        )
        assert [m.body for m in twilio.received] == ["Order 42 shipped"]
        assert proxy.tunnels == [at(twilio.port)]


async def test_sendgrid_through_the_proxy(proxy: ConnectProxy) -> None:
    async with serving(SendgridStandIn()) as sendgrid:
        config = {"api_key": "SG.standin", "from": "no-reply@acme.test", "base_url": sendgrid.url}
        await sent(SendgridProvider(spec("sendgrid", "email", config), env_of(via(proxy))), email())
        assert len(sendgrid.sent) == 1
        assert proxy.tunnels == [at(sendgrid.port)]


async def test_ses_through_the_proxy(proxy: ConnectProxy) -> None:
    async with serving(SesStandIn()) as ses:
        config = {
            "region": ses.region,
            "access_key_id": "AKIDSTANDIN",
            "secret_access_key": "standin-secret",
            "from": "no-reply@acme.test",
            "base_url": ses.url,
        }
        await sent(SesProvider(spec("ses", "email", config), env_of(via(proxy))), email())
        [message] = ses.sent
        assert message.body["Destination"] == {"ToAddresses": ["alex@example.com"]}
        assert proxy.tunnels == [at(ses.port)]


async def test_fcm_token_and_send_through_the_proxy(proxy: ConnectProxy) -> None:
    async with serving(FcmStandin()) as fcm:
        config = {"service_account": fcm.service_account(), "base_url": fcm.url}
        await sent(FcmProvider(spec("fcm", "push", config), env_of(via(proxy))), push("fcm"))
        assert [m["token"] for m in fcm.received] == ["tok-1"]
        assert set(proxy.tunnels) == {at(fcm.port)}  # the OAuth token and the send


async def test_webpush_through_the_proxy(proxy: ConnectProxy, engine: Any) -> None:
    private, public = vapid_keys()
    async with serving(PushService()) as service:
        browser = service.subscribe(server_key=public)
        config = {"vapid_private_key": private, "vapid_subject": "mailto:ops@example.com"}
        provider = WebpushProvider(spec("webpush", "webpush", config), env_of(via(proxy), engine))
        await sent(provider, delivery("webpush", [browser.subscription], PUSH_CONTENT))
        [received] = service.received
        assert received.payload == PUSH_CONTENT  # decrypted by the push service
        assert proxy.tunnels == [at(service.port)]


async def test_apns_http2_through_the_proxy(proxy: ConnectProxy) -> None:
    async with serving(ApnsStandin()) as apns:
        await sent(
            ApnsProvider(spec("apns", "push", apns.config()), env_of(via(proxy))), push("apns")
        )
        assert [r.token for r in apns.received] == ["tok-1"]
        assert proxy.tunnels == [at(apns.port)]


# Each chat kind and WhatsApp kind: its stand-in, the provider's configuration, where a
# delivery goes (``to``) and its content.
CHAT = {"text": "Order 42 shipped"}
WHATSAPP = {"template": "hello_world", "language": "en_US"}
MESSAGING: dict[str, Callable[[Any], tuple[dict[str, Any], str, Any, dict[str, Any]]]] = {
    "slack_webhook": lambda s: ({}, "chat", [{"kind": "slack", "webhook_url": s.hook()}], CHAT),
    "slack": lambda s: (s.config(), "chat", [{"kind": "slack", "channel": "C0ALERTS01"}], CHAT),
    "discord": lambda s: ({}, "chat", [{"kind": "discord", "webhook_url": s.webhook()}], CHAT),
    "teams": lambda s: ({}, "chat", [{"kind": "teams", "webhook_url": s.workflow()}], CHAT),
    "mattermost": lambda s: ({}, "chat", [{"kind": "mattermost", "webhook_url": s.hook()}], CHAT),
    "google_chat": lambda s: (
        {},
        "chat",
        [{"kind": "google_chat", "webhook_url": s.webhook()}],
        CHAT,
    ),
    "telegram": lambda s: (s.config(), "chat", [{"kind": "telegram", "chat_id": "4242001"}], CHAT),
    "whatsapp_cloud": lambda s: (s.config(), "whatsapp", "+14155550100", WHATSAPP),
    "twilio_whatsapp": lambda s: (
        s.config(),
        "whatsapp",
        "+14155550100",
        {"content_sid": "HX" + "ab" * 16, "body": ["Alex", "A42"]},
    ),
}
STANDINS: dict[str, Callable[[], Any]] = {
    "slack_webhook": SlackStandin,
    "slack": SlackStandin,
    "discord": DiscordStandin,
    "teams": TeamsStandin,
    "mattermost": MattermostStandin,
    "google_chat": GoogleChatStandin,
    "telegram": TelegramStandin,
    "whatsapp_cloud": WhatsappStandin,
    "twilio_whatsapp": lambda: TwilioStandin(contents={"HX" + "ab" * 16: 2}),
}


@pytest.mark.parametrize("kind", list(MESSAGING))
async def test_chat_and_whatsapp_kinds_through_the_proxy(
    proxy: ConnectProxy, engine: Any, kind: str
) -> None:
    async with serving(STANDINS[kind]()) as standin:
        config, channel, to, content = MESSAGING[kind](standin)
        made = ProviderSpec(tenant_id="t1", name=kind, kind=kind, channel=channel, config=config)
        provider = registry.load(kind)(made, env_of(via(proxy), engine))
        await sent(provider, delivery(channel, to, content))
        assert len(standin.received) == 1
        assert proxy.tunnels == [at(standin.port)]


async def test_webhooks_through_the_proxy(proxy: ConnectProxy, sink: WebhookSink) -> None:
    webhook = WebhookProvider(secret_of, allow_private=True, proxies=via(proxy).proxies)
    await sent(webhook, delivery("webhook", f"{sink.url}/hook", {"body": {"n": 1}}))
    assert [r.path for r in sink.received] == ["/hook"]
    assert proxy.tunnels == [at(sink.port)]


async def test_a_deployment_behind_a_proxy(
    proxy: ConnectProxy, sink: WebhookSink, migrated_sqlite_url: str
) -> None:
    """Clarion running every role with ``HTTP_PROXY`` set: a recipient's webhook and the
    tenant's status webhook go through it; the tenant's Twilio provider, stored through
    the API with a proxy of its own (sealed, shown as ``***``), through that one."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    settings = make_settings(
        migrated_sqlite_url, "embedded://", secret_key=key, http_proxy=proxy.url, no_proxy=""
    )
    own = ConnectProxy(credentials=("tenant", PASSWORD))
    async with serving(own), serving(TwilioStandin()) as twilio, running(settings) as app:
        config = twilio.config(proxy=own.url_with("tenant", QUOTED))
        body = {"channel": "sms", "kind": "twilio", "config": config}
        response = await app.client.put("/v1/providers/sms-main", json=body, headers=app.auth)
        assert response.status_code == 200, response.text
        assert response.json()["config"]["proxy"] == "***"
        hook = {"url": f"{sink.url}/events", "events": ["delivery.sent"]}
        response = await app.client.put("/v1/webhooks/main", json=hook, headers=app.auth)
        assert response.status_code == 200, response.text
        await app.put_recipient("u-1", phone="+14155550100", webhook_url=f"{sink.url}/hook")
        template = {"channels": {"sms": {"text": "Shipped"}, "webhook": {"body": {"n": 1}}}}
        await app.put_template("t", template)
        response = await app.send({"template": "t", "to": {"recipient_id": "u-1"}})
        assert response.status_code == 202, response.text
        await app.drain()
        assert [m.body for m in twilio.received] == ["Shipped"]
        paths = sorted(r.path for r in sink.received)
        assert paths == ["/events", "/events", "/hook"]  # two deliveries sent, one hook
        assert set(proxy.tunnels) == {at(sink.port)}
        assert own.tunnels == [at(twilio.port)]
        assert proxy.refused == own.refused == []


# -- NO_PROXY and a provider's own proxy --------------------------------------------------


async def test_no_proxy_sends_direct(proxy: ConnectProxy, engine: Any) -> None:
    settings = via(proxy, no_proxy="localhost, 127.0.0.0/8")
    async with serving(TwilioStandin()) as twilio, serving(ApnsStandin()) as apns:
        await sent(
            TwilioProvider(spec("twilio", "sms", twilio.config()), env_of(settings, engine)), sms()
        )
        await sent(
            ApnsProvider(spec("apns", "push", apns.config()), env_of(settings)), push("apns")
        )
        assert len(twilio.received) == len(apns.received) == 1
    assert proxy.connections == 0


async def test_a_providers_own_proxy_or_none(proxy: ConnectProxy, engine: Any) -> None:
    async with serving(ConnectProxy()) as own, serving(TwilioStandin()) as twilio:
        settings = via(proxy)  # the deployment's proxy: not used by either provider
        mine = twilio.config(proxy=own.url)
        await sent(TwilioProvider(spec("twilio", "sms", mine), env_of(settings, engine)), sms())
        none = twilio.config(proxy="none")
        await sent(TwilioProvider(spec("twilio", "sms", none), env_of(settings, engine)), sms())
        assert len(twilio.received) == 2
        assert own.tunnels == [at(twilio.port)]
    assert proxy.connections == 0


# -- proxy authentication and refusals ---------------------------------------------------


async def test_the_proxys_credentials_are_sent(engine: Any) -> None:
    async with serving(ConnectProxy(credentials=("clarion", PASSWORD))) as proxy:
        settings = via(proxy.url_with("clarion", QUOTED))
        async with serving(TwilioStandin()) as twilio, serving(ApnsStandin()) as apns:
            await sent(
                TwilioProvider(spec("twilio", "sms", twilio.config()), env_of(settings, engine)),
                sms(),
            )
            await sent(
                ApnsProvider(spec("apns", "push", apns.config()), env_of(settings)), push("apns")
            )
            assert len(twilio.received) == len(apns.received) == 1
        assert proxy.tunnels == [at(twilio.port), at(apns.port)]
        assert proxy.refused == []


@pytest.mark.parametrize("password", [None, "wrong-password"])
async def test_wrong_or_missing_proxy_credentials_are_a_clear_error(
    password: str | None, engine: Any
) -> None:
    async with serving(ConnectProxy(credentials=("clarion", PASSWORD))) as proxy:
        url = proxy.url if password is None else proxy.url_with("clarion", password)
        settings = via(url)
        async with serving(TwilioStandin()) as twilio, serving(ApnsStandin()) as apns:
            errors = [
                await refused(
                    TwilioProvider(
                        spec("twilio", "sms", twilio.config()), env_of(settings, engine)
                    ),
                    sms(),
                ),
                await refused(
                    ApnsProvider(spec("apns", "push", apns.config()), env_of(settings)),
                    push("apns"),
                ),
            ]
            assert twilio.received == []
            assert apns.received == []
        for error in errors:
            assert isinstance(error, TransientError)
            assert error.reason == "proxy_auth_required"
            assert "407" in error.message
            assert proxy.url in error.message
            assert "wrong-password" not in error.message
        assert proxy.tunnels == []
        assert [status for _, status in proxy.refused] == [407, 407]


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [(403, PermanentError, "proxy_refused"), (502, TransientError, "proxy_error")],
)
async def test_a_refused_connect_is_a_clear_error(
    proxy: ConnectProxy, engine: Any, status: int, kind: type[ProviderError], reason: str
) -> None:
    async with serving(TwilioStandin()) as twilio, serving(ApnsStandin()) as apns:
        proxy.answers = {at(twilio.port): status, at(apns.port): status}
        errors = [
            await refused(
                TwilioProvider(spec("twilio", "sms", twilio.config()), env_of(via(proxy), engine)),
                sms(),
            ),
            await refused(
                ApnsProvider(spec("apns", "push", apns.config()), env_of(via(proxy))), push("apns")
            ),
        ]
    for error in errors:
        assert isinstance(error, kind)
        assert error.reason == reason
        assert f"{status}" in error.message
    assert twilio.received == []
    assert apns.received == []


async def test_a_proxy_that_is_down_is_a_connection_error(engine: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{unused.getsockname()[1]}"
    async with serving(TwilioStandin()) as twilio:
        provider = TwilioProvider(spec("twilio", "sms", twilio.config()), env_of(via(down), engine))
        error = await refused(provider, sms())
    assert isinstance(error, TransientError)
    assert error.reason == "connection_error"
    assert "proxy" in error.message


# -- the address guard through the proxy --------------------------------------------------


async def test_a_private_destination_is_refused_before_the_proxy_is_asked(
    proxy: ConnectProxy, sink: WebhookSink, names: Callable[[dict[str, str]], list[str]]
) -> None:
    """Private addresses not allowed: a name resolving to loopback, an internal literal,
    and APNs (httpx) alike are refused; the proxy (itself on loopback: the operator's
    choice) is never contacted."""
    names({"rebind.test": "127.0.0.1"})
    settings = via(proxy, allow_private_webhooks=False)
    webhook = WebhookProvider(secret_of, allow_private=False, proxies=settings.proxies)
    apns_config = ApnsStandin().config(base_url=f"http://rebind.test:{sink.port}")
    errors = [
        await refused(webhook, delivery("webhook", f"http://rebind.test:{sink.port}/h", {})),
        await refused(webhook, delivery("webhook", "http://169.254.169.254/latest", {})),
        await refused(
            ApnsProvider(spec("apns", "push", apns_config), env_of(settings)), push("apns")
        ),
    ]
    assert [e.reason for e in errors] == ["address_refused"] * 3
    assert proxy.connections == 0
    assert sink.received == []


async def test_the_proxy_is_asked_for_the_checked_address_not_the_name(
    proxy: ConnectProxy, names: Callable[[dict[str, str]], list[str]]
) -> None:
    """``hooks.test`` resolves to a public address, which the guard allows; the proxy is
    asked to CONNECT to that address (it routes it to the server on loopback), so a
    lookup of its own could not send the request elsewhere."""
    lookups = names({"hooks.test": "8.8.8.8"})
    settings = via(proxy, allow_private_webhooks=False)
    async with serving(WebhookSink()) as sink, serving(ApnsStandin()) as apns:
        proxy.routes = {
            f"8.8.8.8:{sink.port}": ("127.0.0.1", sink.port),
            f"8.8.8.8:{apns.port}": ("127.0.0.1", apns.port),
        }
        webhook = WebhookProvider(secret_of, allow_private=False, proxies=settings.proxies)
        await sent(webhook, delivery("webhook", f"http://hooks.test:{sink.port}/h", {"body": {}}))
        config = apns.config(base_url=f"http://hooks.test:{apns.port}")
        await sent(ApnsProvider(spec("apns", "push", config), env_of(settings)), push("apns"))
        assert len(sink.received) == len(apns.received) == 1
    assert proxy.tunnels == [f"8.8.8.8:{sink.port}", f"8.8.8.8:{apns.port}"]
    assert lookups == ["hooks.test", "hooks.test"]


async def test_a_tenants_proxy_is_checked_like_any_address(
    proxy: ConnectProxy, engine: Any, names: Callable[[dict[str, str]], list[str]]
) -> None:
    """The deployment's proxy may be on loopback; one a tenant names in a provider's
    configuration may not (else it would reach the deployment's own network)."""
    names({"api.twilio.test": "8.8.8.8"})
    settings = Settings(allow_private_webhooks=False)
    config = TwilioStandin().config(base_url="http://api.twilio.test", proxy=proxy.url)
    error = await refused(
        TwilioProvider(spec("twilio", "sms", config), env_of(settings, engine)), sms()
    )
    assert error.reason == "address_refused"
    assert "127.0.0.1" in error.message
    assert proxy.connections == 0


# -- TLS inside the tunnel ----------------------------------------------------------------


def tls_server(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_runs_tls_to_the_destination_inside_the_tunnel(
    proxy: ConnectProxy, names: Callable[[dict[str, str]], list[str]]
) -> None:
    """The certificate is verified against the URL's name (one for another name is
    refused), and the proxy carries only ciphertext."""
    names({"hooks.test": "127.0.0.1"})
    ca = trustme.CA()
    good, other = WebhookSink(), WebhookSink()
    servers: list[asyncio.Server] = []
    for sink, name in ((good, "hooks.test"), (other, "other.test")):
        context = tls_server(ca, name)
        server = await asyncio.start_server(sink._serve, "127.0.0.1", 0, ssl=context)
        sink.port = server.sockets[0].getsockname()[1]
        servers.append(server)
    guard = AddressGuard(allow_private=True, proxies=via(proxy).proxies)
    http = HttpClient(guard, ssl_context=trusting(ca))
    secret = b'{"card": "4111-1111-1111-1111"}'
    try:
        reply = await http.request(
            "POST", f"https://hooks.test:{good.port}/h", {}, secret, timeout=5, max_body=1024
        )
        with pytest.raises(TransientError) as caught:
            await http.request(
                "POST", f"https://hooks.test:{other.port}/h", {}, secret, timeout=5, max_body=1024
            )
    finally:
        await http.aclose()
        for server in servers:
            server.close()
        for sink in (good, other):
            await sink.close()
    assert reply.status == 200
    assert [r.body for r in good.received] == [secret]
    assert caught.value.reason == "certificate_error"
    assert other.received == []
    assert proxy.tunnels == [f"hooks.test:{good.port}", f"hooks.test:{other.port}"]
    assert secret not in proxy.carried


async def test_apns_over_tls_through_the_tunnel(
    proxy: ConnectProxy,
    names: Callable[[dict[str, str]], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """HTTP/2 negotiated by ALPN inside the tunnel, the certificate verified for the name."""
    names({"api.push.test": "127.0.0.1"})
    ca = trustme.CA()
    issued = ca.issue_cert("api.push.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **k: trusting(ca))
    standin = ApnsStandin(tls_files=(str(cert), str(key)), host="api.push.test")
    async with serving(standin) as apns:
        await sent(
            ApnsProvider(spec("apns", "push", apns.config()), env_of(via(proxy))), push("apns")
        )
        assert [r.token for r in apns.received] == ["tok-1"]
    assert proxy.tunnels == [f"api.push.test:{apns.port}"]
    assert b"tok-1" not in proxy.carried
