"""The FCM provider against a local stand-in for Google's token endpoint and FCM v1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import pytest

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import ProviderEnv, ProviderSpec, SendResult
from clarion.providers.fcm import FcmProvider
from standins import serving
from standins.fcm import FcmStandin, rsa_key

CONTENT = {"title": "Shipped", "body": "Order 42", "data": {"orderId": "42"}}


def message(*tokens: str, priority: str = "normal", **content: Any) -> Delivery:
    return Delivery(
        id="dlv_1",
        tenant="ten_1",
        notification="ntf_1",
        recipient="usr_1",
        channel="push",
        to=[{"platform": "fcm", "token": token} for token in tokens]
        + [{"platform": "apns", "token": "apns-token-ignored"}],
        content={**CONTENT, **content},
        priority=priority,
        attempt=1,
    )


def provider_for(config: dict[str, Any], timeout: float = 10.0) -> FcmProvider:
    spec = ProviderSpec(tenant_id="ten_1", name="fcm", kind="fcm", channel="push", config=config)
    env = ProviderEnv(settings=Settings(allow_private_webhooks=True), engine=cast(Any, None))
    return FcmProvider(spec, env, timeout=timeout)


@pytest.fixture
async def fcm() -> AsyncIterator[FcmStandin]:
    async with serving(FcmStandin()) as standin:
        yield standin


@pytest.fixture
async def provider(fcm: FcmStandin) -> AsyncIterator[FcmProvider]:
    sender = provider_for({"service_account": fcm.service_account(), "base_url": fcm.url})
    await sender.start()
    yield sender
    await sender.aclose()


async def test_sends_the_content_to_each_token(fcm: FcmStandin, provider: FcmProvider) -> None:
    result = await provider.send(message("tok-a", "tok-b", priority="high"))

    assert result.provider_message_id in (
        "projects/clarion-test/messages/1",
        "projects/clarion-test/messages/2",
    )
    assert result.dead_addresses == ()
    assert sorted(m["token"] for m in fcm.received) == ["tok-a", "tok-b"]
    sent = fcm.received[0]
    assert sent["notification"] == {"title": "Shipped", "body": "Order 42"}
    assert sent["data"] == {"orderId": "42"}
    assert sent["android"]["priority"] == "high"
    assert fcm.rejected == []


async def test_data_values_are_sent_as_strings(fcm: FcmStandin, provider: FcmProvider) -> None:
    await provider.send(message("tok-a", data={"n": 3, "ok": True, "s": "x"}))

    assert fcm.received[0]["data"] == {"n": "3", "ok": "true", "s": "x"}
    assert fcm.received[0]["android"]["priority"] == "normal"


async def test_expiry_and_collapse_id(fcm: FcmStandin, provider: FcmProvider) -> None:
    later = time.time() + 600
    await provider.send(
        msgspec.structs.replace(message("tok-a", collapse_id="c1"), expires_at=later)
    )

    android, apns = fcm.received[0]["android"], fcm.received[0]["apns"]
    assert android["collapse_key"] == "c1"
    assert 590 <= int(android["ttl"].removesuffix("s")) <= 600
    assert apns["headers"]["apns-expiration"] == str(int(later))
    assert apns["headers"]["apns-collapse-id"] == "c1"


async def test_service_account_as_json_text(fcm: FcmStandin) -> None:
    sender = provider_for(
        {"service_account": json.dumps(fcm.service_account()), "base_url": fcm.url}
    )
    try:
        result = await sender.send(message("tok-a"))
    finally:
        await sender.aclose()
    assert result.provider_message_id


async def test_access_token_is_cached(fcm: FcmStandin, provider: FcmProvider) -> None:
    await provider.send(message("tok-a", "tok-b", "tok-c"))
    await provider.send(message("tok-d"))

    assert fcm.token_requests == 1
    assert len(fcm.received) == 4


async def test_token_near_expiry_is_refreshed(fcm: FcmStandin, provider: FcmProvider) -> None:
    # A token with less than five minutes left is not used for another send.
    fcm.expires_in = 120
    await provider.send(message("tok-a"))
    await provider.send(message("tok-b"))

    assert fcm.token_requests == 2
    assert len(fcm.received) == 2


async def test_concurrent_sends_share_one_refresh(fcm: FcmStandin, provider: FcmProvider) -> None:
    await asyncio.gather(*(provider.send(message(f"tok-{i}")) for i in range(20)))

    assert fcm.token_requests == 1
    assert len(fcm.received) == 20


async def test_revoked_token_is_dropped_and_the_send_retried(
    fcm: FcmStandin, provider: FcmProvider
) -> None:
    await provider.send(message("tok-a"))
    fcm.revoke_tokens()

    result = await provider.send(message("tok-b"))

    assert result.provider_message_id
    assert fcm.token_requests == 2
    assert [m["token"] for m in fcm.received] == ["tok-a", "tok-b"]


async def test_token_endpoint_from_config(fcm: FcmStandin) -> None:
    account = {**fcm.service_account(), "token_uri": fcm.token_url}
    sender = provider_for(
        {"service_account": account, "base_url": fcm.url, "token_url": fcm.token_url}
    )
    try:
        await sender.send(message("tok-a"))
    finally:
        await sender.aclose()
    assert fcm.token_requests == 1


async def test_unregistered_single_token(fcm: FcmStandin, provider: FcmProvider) -> None:
    fcm.failures["gone"] = "unregistered"

    with pytest.raises(PermanentError) as caught:
        await provider.send(message("gone"))

    assert caught.value.reason == "unregistered"
    assert caught.value.dead_address == ["gone"]


async def test_invalid_token_is_dead_too(fcm: FcmStandin, provider: FcmProvider) -> None:
    fcm.failures["bad"] = "invalid_token"

    result = await provider.send(message("bad", "tok-a"))

    assert result.dead_addresses == ("bad",)


async def test_gone_token_among_good_ones(fcm: FcmStandin, provider: FcmProvider) -> None:
    fcm.failures["gone"] = "unregistered"

    result = await provider.send(message("tok-a", "gone"))

    assert result == SendResult(
        provider_message_id="projects/clarion-test/messages/1", dead_addresses=("gone",)
    )


async def test_invalid_argument_is_permanent(fcm: FcmStandin, provider: FcmProvider) -> None:
    fcm.failures["big"] = "invalid_argument"

    with pytest.raises(PermanentError) as caught:
        await provider.send(message("big"))

    assert caught.value.reason == "provider_rejected"
    assert caught.value.dead_address is None


async def test_sender_id_mismatch_is_bad_credentials(
    fcm: FcmStandin, provider: FcmProvider
) -> None:
    fcm.failures["other"] = "sender_mismatch"

    with pytest.raises(PermanentError) as caught:
        await provider.send(message("other"))

    assert caught.value.reason == "bad_credentials"


async def test_key_the_service_does_not_know(fcm: FcmStandin) -> None:
    account = fcm.service_account(key=rsa_key())
    sender = provider_for({"service_account": account, "base_url": fcm.url})
    try:
        with pytest.raises(PermanentError) as caught:
            await sender.send(message("tok-a"))
    finally:
        await sender.aclose()

    assert caught.value.reason == "bad_credentials"
    assert fcm.token_requests == 1
    assert fcm.received == []


@pytest.mark.parametrize(
    "account",
    [{"project_id": "p"}, "not json", {**dict.fromkeys(("project_id", "client_email"), "x")}],
)
async def test_unusable_service_account(account: Any) -> None:
    sender = provider_for({"service_account": account})

    with pytest.raises(PermanentError) as caught:
        await sender.send(message("tok-a"))

    assert caught.value.reason == "bad_credentials"


async def test_unreadable_private_key(fcm: FcmStandin) -> None:
    account = {**fcm.service_account(), "private_key": "-----BEGIN PRIVATE KEY-----\nnope"}
    sender = provider_for({"service_account": account, "base_url": fcm.url})
    try:
        with pytest.raises(PermanentError) as caught:
            await sender.send(message("tok-a"))
    finally:
        await sender.aclose()

    assert caught.value.reason == "bad_credentials"


async def test_wrong_project_is_bad_credentials(fcm: FcmStandin) -> None:
    account = {**fcm.service_account(), "project_id": "someone-else"}
    sender = provider_for({"service_account": account, "base_url": fcm.url})
    try:
        with pytest.raises(PermanentError) as caught:
            await sender.send(message("tok-a"))
    finally:
        await sender.aclose()

    assert caught.value.reason == "bad_credentials"


async def test_quota_exceeded_is_transient_with_retry_after(
    fcm: FcmStandin, provider: FcmProvider
) -> None:
    fcm.failures["busy"] = "quota"

    with pytest.raises(TransientError) as caught:
        await provider.send(message("busy"))

    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("failure", ["unavailable", "internal"])
async def test_server_errors_are_transient(
    fcm: FcmStandin, provider: FcmProvider, failure: str
) -> None:
    fcm.failures["tok-a"] = failure

    with pytest.raises(TransientError):
        await provider.send(message("tok-a"))


async def test_transient_wins_over_gone(fcm: FcmStandin, provider: FcmProvider) -> None:
    fcm.failures.update({"gone": "unregistered", "busy": "unavailable"})

    with pytest.raises(TransientError):
        await provider.send(message("gone", "busy"))


async def test_a_slow_token_times_out(fcm: FcmStandin) -> None:
    fcm.failures["slow"] = "hang"
    sender = provider_for(
        {"service_account": fcm.service_account(), "base_url": fcm.url}, timeout=0.5
    )
    try:
        result = await sender.send(message("slow", "tok-a"))
        with pytest.raises(TransientError) as caught:
            await sender.send(message("slow"))
    finally:
        await sender.aclose()

    assert result.provider_message_id
    assert caught.value.reason == "timeout"


async def test_server_down_is_transient(fcm: FcmStandin, provider: FcmProvider) -> None:
    await provider.send(message("tok-a"))
    await fcm.close()

    with pytest.raises(TransientError) as caught:
        await provider.send(message("tok-b"))

    assert caught.value.reason == "connection_error"


async def test_token_endpoint_down_is_transient(fcm: FcmStandin) -> None:
    sender = provider_for({"service_account": fcm.service_account(), "base_url": fcm.url})
    await fcm.close()
    try:
        with pytest.raises(TransientError):
            await sender.send(message("tok-a"))
    finally:
        await sender.aclose()


async def test_no_fcm_token(provider: FcmProvider) -> None:
    with pytest.raises(PermanentError) as caught:
        await provider.send(message())

    assert caught.value.reason == "no_address"
