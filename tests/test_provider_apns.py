"""The APNs provider against a local HTTP/2 stand-in for Apple's provider API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import jwt
import msgspec
import pytest

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.apns import TOKEN_LIFETIME, ApnsProvider, ProviderToken
from clarion.providers.base import ProviderEnv, ProviderSpec
from standins import serving
from standins.apns import ApnsStandin, p8_key, p8_pem

CONTENT = {"title": "Shipped", "body": "Order 42", "data": {"orderId": "42"}}


def message(
    *tokens: str, priority: str = "normal", delivery_id: str = "dlv_1", **content: Any
) -> Delivery:
    return Delivery(
        id=delivery_id,
        tenant="ten_1",
        notification="ntf_1",
        recipient="usr_1",
        channel="push",
        to=[{"platform": "apns", "token": token} for token in tokens]
        + [{"platform": "fcm", "token": "fcm-token-ignored"}],
        content={**CONTENT, **content},
        priority=priority,
        attempt=1,
    )


def provider_for(config: dict[str, Any], timeout: float = 10.0) -> ApnsProvider:
    spec = ProviderSpec(tenant_id="ten_1", name="apns", kind="apns", channel="push", config=config)
    env = ProviderEnv(settings=Settings(allow_private_webhooks=True), engine=cast(Any, None))
    return ApnsProvider(spec, env, timeout=timeout)


@pytest.fixture
async def apns() -> AsyncIterator[ApnsStandin]:
    async with serving(ApnsStandin()) as standin:
        yield standin


@pytest.fixture
async def provider(apns: ApnsStandin) -> AsyncIterator[ApnsProvider]:
    sender = provider_for(apns.config())
    await sender.start()
    yield sender
    await sender.aclose()


async def test_sends_an_alert(apns: ApnsStandin, provider: ApnsProvider) -> None:
    result = await provider.send(message("aa11", priority="high", collapse_id="order-42"))

    [got] = apns.received
    assert got.token == "aa11"
    assert got.payload == {
        "orderId": "42",
        "aps": {"alert": {"title": "Shipped", "body": "Order 42"}},
    }
    assert got.headers["apns-topic"] == "com.example.app"
    assert got.headers["apns-push-type"] == "alert"
    assert got.headers["apns-priority"] == "10"
    assert got.headers["apns-collapse-id"] == "order-42"
    assert "apns-expiration" not in got.headers
    assert result.provider_message_id == got.headers["apns-id"]
    assert result.dead_addresses == ()
    assert apns.refused == []


async def test_apns_id_is_stable_per_delivery_and_token(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    first = await provider.send(message("aa11"))
    again = await provider.send(message("aa11"))
    other = await provider.send(message("aa11", delivery_id="dlv_2"))

    assert first.provider_message_id == again.provider_message_id
    assert first.provider_message_id != other.provider_message_id
    assert uuid.UUID(str(first.provider_message_id))


async def test_background_and_critical(apns: ApnsStandin, provider: ApnsProvider) -> None:
    await provider.send(message("aa11", priority="critical", title=None, body=None))
    await provider.send(message("bb22", priority="critical", sound="default"))

    background, critical = apns.received
    assert background.headers["apns-push-type"] == "background"
    assert background.headers["apns-priority"] == "5"
    assert background.payload["aps"] == {"content-available": 1}
    assert critical.headers["apns-priority"] == "10"
    assert critical.payload["aps"]["interruption-level"] == "time-sensitive"
    assert critical.payload["aps"]["sound"] == "default"


async def test_expiry_becomes_apns_expiration(apns: ApnsStandin, provider: ApnsProvider) -> None:
    await provider.send(msgspec.structs.replace(message("aa11"), expires_at=1_900_000_000.5))

    assert apns.received[0].headers["apns-expiration"] == "1900000000"


async def test_provider_token_is_es256_by_the_team(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    await provider.send(message("aa11"))

    [token] = apns.provider_tokens
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    claims = jwt.decode(token, apns.key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == "TEAM123456"


async def test_concurrent_sends_share_one_connection(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    results = await asyncio.gather(*(provider.send(message(f"t{i:03}")) for i in range(50)))

    assert len(apns.received) == 50
    assert all(result.provider_message_id for result in results)
    assert len(apns.connections) == 1


async def test_many_tokens_of_one_delivery_share_one_connection(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    result = await provider.send(message(*(f"t{i:03}" for i in range(30))))

    assert len(apns.received) == 30
    assert result.provider_message_id
    assert len(apns.connections) == 1


async def test_provider_token_is_reused(apns: ApnsStandin, provider: ApnsProvider) -> None:
    for i in range(5):
        await provider.send(message(f"t{i}"))
    await asyncio.gather(*(provider.send(message(f"u{i}")) for i in range(10)))

    assert len(apns.provider_tokens) == 15
    assert len(set(apns.provider_tokens)) == 1


async def test_expired_provider_token_is_renewed_once(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    await provider.send(message("aa11"))
    apns.expire_next = 1

    result = await provider.send(message("bb22"))

    assert result.provider_message_id
    assert [r.token for r in apns.received] == ["aa11", "bb22"]
    first, rejected, renewed = apns.provider_tokens
    assert first == rejected != renewed
    await provider.send(message("cc33"))
    assert apns.provider_tokens[-1] == renewed


async def test_expired_again_after_renewal_is_transient(
    apns: ApnsStandin, provider: ApnsProvider
) -> None:
    apns.expire_next = 2

    with pytest.raises(TransientError):
        await provider.send(message("aa11"))

    assert len(set(apns.provider_tokens)) == 2


def test_provider_token_renewed_after_fifty_minutes() -> None:
    now = [1_000_000.0]
    tokens = ProviderToken(p8_key(), "KEY1234567", "TEAM123456", clock=lambda: now[0])
    first = tokens.current()
    now[0] += TOKEN_LIFETIME - 1
    assert tokens.current() == first
    now[0] += 1
    renewed = tokens.current()
    assert renewed != first
    assert jwt.decode(renewed, options={"verify_signature": False})["iat"] == int(now[0])


async def test_unregistered_single_token(apns: ApnsStandin, provider: ApnsProvider) -> None:
    apns.failures["dead"] = "unregistered"

    with pytest.raises(PermanentError) as caught:
        await provider.send(message("dead"))

    assert caught.value.reason == "unregistered"
    assert caught.value.dead_address == ["dead"]


async def test_gone_tokens_among_good_ones(apns: ApnsStandin, provider: ApnsProvider) -> None:
    apns.failures.update({"dead": "unregistered", "bad": "bad_token"})

    result = await provider.send(message("dead", "good", "bad"))

    assert result.provider_message_id == apns.received[0].headers["apns-id"]
    assert sorted(result.dead_addresses) == ["bad", "dead"]


async def test_other_bad_request_is_permanent(apns: ApnsStandin, provider: ApnsProvider) -> None:
    apns.failures["x1"] = "not_for_topic"

    with pytest.raises(PermanentError) as caught:
        await provider.send(message("x1"))

    assert caught.value.reason == "provider_rejected"
    assert caught.value.dead_address is None


async def test_payload_too_large_is_permanent(apns: ApnsStandin, provider: ApnsProvider) -> None:
    with pytest.raises(PermanentError) as caught:
        await provider.send(message("aa11", body="x" * 5000))

    assert caught.value.reason == "provider_rejected"
    assert apns.refused == [(413, "PayloadTooLarge")]


async def test_key_apple_does_not_know(apns: ApnsStandin) -> None:
    sender = provider_for(apns.config(private_key=p8_pem(p8_key())))
    try:
        with pytest.raises(PermanentError) as caught:
            await sender.send(message("aa11"))
    finally:
        await sender.aclose()

    assert caught.value.reason == "bad_credentials"
    assert apns.refused == [(403, "InvalidProviderToken")]


async def test_wrong_key_id(apns: ApnsStandin) -> None:
    sender = provider_for(apns.config(key_id="OTHERKEY12"))
    try:
        with pytest.raises(PermanentError) as caught:
            await sender.send(message("aa11"))
    finally:
        await sender.aclose()

    assert caught.value.reason == "bad_credentials"


@pytest.mark.parametrize("pem", ["not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n"])
async def test_unreadable_key(pem: str) -> None:
    sender = provider_for(ApnsStandin().config(private_key=pem))

    with pytest.raises(PermanentError) as caught:
        await sender.send(message("aa11"))

    assert caught.value.reason == "bad_credentials"


async def test_too_many_requests_is_transient(apns: ApnsStandin, provider: ApnsProvider) -> None:
    apns.failures["busy"] = "too_many"

    with pytest.raises(TransientError) as caught:
        await provider.send(message("busy"))

    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("failure", ["internal", "unavailable"])
async def test_server_errors_are_transient(
    apns: ApnsStandin, provider: ApnsProvider, failure: str
) -> None:
    apns.failures["aa11"] = failure

    with pytest.raises(TransientError):
        await provider.send(message("aa11"))


async def test_server_down_is_transient(apns: ApnsStandin, provider: ApnsProvider) -> None:
    await provider.send(message("aa11"))
    await apns.close()

    with pytest.raises(TransientError):
        await provider.send(message("bb22"))


async def test_a_slow_token_times_out(apns: ApnsStandin) -> None:
    apns.failures["slow"] = "hang"
    sender = provider_for(apns.config(), timeout=0.5)
    try:
        result = await sender.send(message("slow", "aa11"))
    finally:
        await sender.aclose()

    assert result.provider_message_id
    assert [r.token for r in apns.received] == ["aa11"]


async def test_the_standin_refuses_http1(apns: ApnsStandin) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{apns.url}/3/device/aa11", content=b"{}")

    assert response.http_version == "HTTP/1.1"
    assert response.status_code == 505
