"""Web Push against a local push service that verifies VAPID and decrypts what it receives."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec
from clarion.providers.webpush import WebpushProvider, load_vapid_key, origin_of
from harness import Harness, make_settings, running
from standins import serving
from standins.webpush import Browser, PushService, b64url, vapid_keys

SUBJECT = "mailto:ops@example.com"
CONTENT = {"title": "Shipped", "body": "Order 42 is on its way", "url": "https://shop.example/o/42"}


@pytest.fixture
async def service() -> AsyncIterator[PushService]:
    async with serving(PushService()) as server:
        yield server


@pytest.fixture
def keys() -> tuple[str, str]:
    return vapid_keys()


@pytest.fixture
async def provider_of() -> AsyncIterator[Any]:
    engine = create_async_engine("sqlite+aiosqlite://")
    made: list[WebpushProvider] = []

    async def make(private_key: str, *, allow_private: bool = True) -> WebpushProvider:
        config = {"vapid_private_key": private_key, "vapid_subject": SUBJECT}
        spec = ProviderSpec(
            tenant_id="t1", name="wp", kind="webpush", channel="webpush", config=config
        )
        env = ProviderEnv(settings=Settings(allow_private_webhooks=allow_private), engine=engine)
        provider = WebpushProvider(spec, env)
        await provider.start()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
    await engine.dispose()


def push(to: Any, content: dict[str, Any] | None = None, priority: str = "normal") -> Any:
    return Delivery(
        id="dlv_1",
        tenant="t1",
        notification="ntf_1",
        recipient="u-1",
        channel="webpush",
        to=to,
        content=CONTENT if content is None else content,
        priority=priority,
        attempt=1,
    )


async def test_the_browser_decrypts_what_was_sent(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    private, public = keys
    browser = service.subscribe(server_key=public)  # refuses any other VAPID key
    provider = await provider_of(private)
    result = await provider.send(push([browser.subscription]))
    assert service.rejected == []
    [received] = service.received
    assert received.payload == CONTENT
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith(f"{service.url}/message/")
    assert result.dead_addresses == ()
    assert received.headers["Content-Encoding"] == "aes128gcm"
    assert received.headers["Content-Type"] == "application/octet-stream"
    assert received.headers["TTL"] == "86400"
    assert received.headers["Urgency"] == "normal"
    assert provider.public_key == public


async def test_the_vapid_token_names_the_push_service(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe()
    await provider.send(push([browser.subscription]))
    await provider.send(push([browser.subscription]))
    first, second = service.received
    assert first.claims["aud"] == service.url == origin_of(browser.endpoint)
    assert first.claims["sub"] == SUBJECT
    assert time.time() < first.claims["exp"] <= time.time() + 24 * 3600
    # The token is reused for the same service while it has long enough to live.
    assert first.headers["Authorization"] == second.headers["Authorization"]


def test_origin_of_drops_the_default_port_and_path() -> None:
    assert origin_of("https://Push.Example.com:443/wpush/v2/abc") == "https://push.example.com"
    assert origin_of("https://push.example.com:8443/x") == "https://push.example.com:8443"
    assert origin_of("http://127.0.0.1:9000/push/1") == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("priority", "urgency"), [("critical", "high"), ("high", "high"), ("low", "low")]
)
async def test_urgency_follows_priority(
    service: PushService, keys: tuple[str, str], provider_of: Any, priority: str, urgency: str
) -> None:
    provider = await provider_of(keys[0])
    await provider.send(push([service.subscribe().subscription], priority=priority))
    assert service.received[0].headers["Urgency"] == urgency


async def test_a_pem_key_works_too(service: PushService, provider_of: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    provider = await provider_of(pem)
    await provider.send(push([service.subscribe(server_key=public).subscription]))
    assert service.rejected == []
    assert len(service.received) == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_subscription_is_permanent_and_dead(
    service: PushService, keys: tuple[str, str], provider_of: Any, status: int
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe()
    service.answer(browser, status)
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([browser.subscription]))
    assert caught.value.reason == "unregistered"
    assert caught.value.dead_address == [browser.endpoint]


async def test_one_gone_of_two_is_sent_with_a_dead_address(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    live, gone = service.subscribe(), service.subscribe()
    service.answer(gone, 410)
    result = await provider.send(push([gone.subscription, live.subscription]))
    assert result.dead_addresses == (gone.endpoint,)
    [received] = service.received
    assert received.endpoint == live.endpoint
    assert received.payload == CONTENT


async def test_every_subscription_gets_its_own_encryption(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    browsers = [service.subscribe() for _ in range(3)]
    result = await provider.send(push([b.subscription for b in browsers]))
    assert result.dead_addresses == ()
    assert {r.endpoint for r in service.received} == {b.endpoint for b in browsers}
    assert all(r.payload == CONTENT for r in service.received)


async def test_too_many_requests_is_transient(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe()
    service.answer(browser, 429, retry_after="30")
    with pytest.raises(TransientError) as caught:
        await provider.send(push([browser.subscription]))
    assert caught.value.retry_after == 30.0
    assert caught.value.reason == "http_429"


async def test_a_server_error_is_transient_unless_another_succeeded(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    failing, working = service.subscribe(), service.subscribe()
    service.answer(failing, 500)
    with pytest.raises(TransientError):
        await provider.send(push([failing.subscription]))
    result = await provider.send(push([failing.subscription, working.subscription]))
    assert result.dead_addresses == ()
    assert [r.endpoint for r in service.received] == [working.endpoint]


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "provider_rejected"), (403, "bad_credentials"), (413, "payload_too_large")],
)
async def test_refusals_are_permanent(
    service: PushService, keys: tuple[str, str], provider_of: Any, status: int, reason: str
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe()
    service.answer(browser, status)
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([browser.subscription]))
    assert caught.value.reason == reason
    assert caught.value.dead_address is None


async def test_a_subscription_made_with_another_key_is_refused(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe(server_key=vapid_keys()[1])
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([browser.subscription]))
    assert caught.value.reason == "bad_credentials"
    assert service.rejected == ["403 VAPID key differs from the subscription's"]


@pytest.mark.parametrize(
    "bad_key",
    [
        "not a key",
        b64url(b"\x00" * 32),  # zero is no private key
        b64url(b"\x01" * 31),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
    ],
)
async def test_a_bad_vapid_key_is_a_clear_permanent_error(
    service: PushService, provider_of: Any, bad_key: str
) -> None:
    with pytest.raises(ValueError, match="vapid_private_key"):
        load_vapid_key(bad_key)
    provider = await provider_of(bad_key)
    assert provider.public_key is None
    with pytest.raises(PermanentError, match="vapid_private_key") as caught:
        await provider.send(push([service.subscribe().subscription]))
    assert caught.value.reason == "bad_credentials"
    assert service.received == service.rejected == []


async def test_a_key_on_another_curve_is_refused(provider_of: Any) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError, match="P-256"):
        load_vapid_key(pem)


@pytest.mark.parametrize(
    "subscription",
    [
        {"endpoint": "https://push.example.com/x"},
        {"endpoint": "https://push.example.com/x", "keys": {"p256dh": "AAAA", "auth": "AAAA"}},
        "https://push.example.com/x",
    ],
)
async def test_a_malformed_subscription_is_an_invalid_address(
    keys: tuple[str, str], provider_of: Any, subscription: Any
) -> None:
    provider = await provider_of(keys[0])
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([subscription]))
    assert caught.value.reason == "invalid_address"


@pytest.mark.parametrize("to", [[], None, "https://push.example.com/x"])
async def test_no_subscription_is_no_address(
    keys: tuple[str, str], provider_of: Any, to: Any
) -> None:
    provider = await provider_of(keys[0])
    with pytest.raises(PermanentError) as caught:
        await provider.send(push(to))
    assert caught.value.reason == "no_address"


async def test_content_too_big_for_one_record_is_refused(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([service.subscribe().subscription], {"body": "x" * 4000}))
    assert caught.value.reason == "payload_too_large"
    # The largest content that fits goes through whole.
    largest = {"body": "x" * (3993 - len('{"body":""}'))}
    await provider.send(push([service.subscribe().subscription], largest))
    assert service.received[0].payload == largest


async def test_private_endpoints_are_refused_unless_allowed(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0], allow_private=False)
    browser: Browser = service.subscribe()
    https = {**browser.subscription, "endpoint": browser.endpoint.replace("http:", "https:")}
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([https]))
    assert caught.value.reason == "address_refused"
    with pytest.raises(PermanentError) as caught:
        await provider.send(push([browser.subscription]))  # plain http
    assert caught.value.reason == "invalid_address"
    assert service.received == []


async def test_push_service_down_is_transient(
    service: PushService, keys: tuple[str, str], provider_of: Any
) -> None:
    provider = await provider_of(keys[0])
    browser = service.subscribe()
    await service.close()
    with pytest.raises(TransientError) as caught:
        await provider.send(push([browser.subscription]))
    assert caught.value.reason == "connection_error"


# -- through Clarion ----------------------------------------------------------------------


@pytest.fixture
async def clarion(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    secret_key = base64.b64encode(secrets.token_bytes(32)).decode()
    async with running(make_settings(*backend, secret_key=secret_key)) as harness:
        yield harness


async def test_a_notification_reaches_the_browser(
    clarion: Harness, service: PushService, keys: tuple[str, str]
) -> None:
    private, public = keys
    body = {
        "channel": "webpush",
        "kind": "webpush",
        "config": {"vapid_private_key": private, "vapid_subject": SUBJECT},
    }
    response = await clarion.client.put("/v1/providers/wp", json=body, headers=clarion.auth)
    assert response.status_code in (200, 201), response.text
    # name_for (the planner's choice) answers from the settings prepare() loaded.
    await clarion.ctx.providers.prepare([clarion.tenant_id])
    browser = service.subscribe(server_key=public)
    await clarion.put_recipient("u-1", webpush=[browser.subscription])
    template = {
        "title": "Shipped",
        "body": "Order {{ id }}",
        "url": "https://shop.example/o/{{ id }}",
    }
    await clarion.put_template("shipped", {"channels": {"webpush": template}})
    response = await clarion.send(
        {"template": "shipped", "to": {"recipient_id": "u-1"}, "data": {"id": "42"}}
    )
    assert response.status_code == 202, response.text
    await clarion.drain()
    [delivery] = (await clarion.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "sent", delivery
    assert delivery["provider"] == "wp"
    [received] = service.received
    assert received.payload["title"] == "Shipped"
    assert received.payload["body"] == "Order 42"
    assert received.payload["url"] == "https://shop.example/o/42"


async def test_a_bad_vapid_key_is_refused_when_stored(lite: Harness) -> None:
    body = {
        "channel": "webpush",
        "kind": "webpush",
        "config": {"vapid_private_key": "not a key", "vapid_subject": SUBJECT},
    }
    response = await lite.client.put("/v1/providers/wp", json=body, headers=lite.auth)
    assert response.status_code == 422
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert "config.vapid_private_key" in fields
