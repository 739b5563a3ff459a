"""The push fan-out: one delivery to every token of a recipient, through each platform's
provider, against the FCM and APNs stand-ins; and the rule that combines the outcomes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, cast

import pytest

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import parse_retry_after
from clarion.providers.apns import ApnsProvider
from clarion.providers.base import ProviderEnv, ProviderSpec, SendResult
from clarion.providers.fcm import FcmProvider
from clarion.providers.push import PushFanout, combine, push_targets
from standins import serving
from standins.apns import ApnsStandin
from standins.fcm import FcmStandin


def message(*targets: tuple[str, str]) -> Delivery:
    return Delivery(
        id="dlv_1",
        tenant="ten_1",
        notification="ntf_1",
        recipient="usr_1",
        channel="push",
        to=[{"platform": platform, "token": token} for platform, token in targets],
        content={"title": "Shipped", "body": "Order 42", "data": {"orderId": "42"}},
        priority="high",
        attempt=1,
    )


def spec(kind: str, config: dict[str, Any]) -> ProviderSpec:
    return ProviderSpec(tenant_id="ten_1", name=kind, kind=kind, channel="push", config=config)


ENV = ProviderEnv(settings=Settings(allow_private_webhooks=True), engine=cast(Any, None))


@pytest.fixture
async def fcm() -> AsyncIterator[FcmStandin]:
    async with serving(FcmStandin()) as standin:
        yield standin


@pytest.fixture
async def apns() -> AsyncIterator[ApnsStandin]:
    async with serving(ApnsStandin()) as standin:
        yield standin


@pytest.fixture
async def fanout(fcm: FcmStandin, apns: ApnsStandin) -> AsyncIterator[PushFanout]:
    providers = {
        "fcm": FcmProvider(
            spec("fcm", {"service_account": fcm.service_account(), "base_url": fcm.url}), ENV
        ),
        "apns": ApnsProvider(spec("apns", apns.config()), ENV),
    }
    for provider in providers.values():
        await provider.start()
    push = PushFanout(providers)
    await push.start()
    yield push
    await push.aclose()
    for provider in providers.values():
        await provider.aclose()


async def test_reaches_both_platforms(
    fanout: PushFanout, fcm: FcmStandin, apns: ApnsStandin
) -> None:
    result = await fanout.send(message(("apns", "aa11"), ("fcm", "tok-a")))

    assert [m["token"] for m in fcm.received] == ["tok-a"]
    assert fcm.received[0]["notification"] == {"title": "Shipped", "body": "Order 42"}
    assert [r.token for r in apns.received] == ["aa11"]
    assert apns.received[0].payload["aps"]["alert"] == {"title": "Shipped", "body": "Order 42"}
    # The first platform in the address gives the id.
    assert result.provider_message_id == apns.received[0].headers["apns-id"]
    assert result.dead_addresses == ()


async def test_one_platform_all_gone_the_other_sent(
    fanout: PushFanout, fcm: FcmStandin, apns: ApnsStandin
) -> None:
    apns.failures.update({"dead1": "unregistered", "dead2": "bad_token"})

    result = await fanout.send(message(("apns", "dead1"), ("fcm", "tok-a"), ("apns", "dead2")))

    assert result.provider_message_id == "projects/clarion-test/messages/1"
    assert sorted(result.dead_addresses) == ["dead1", "dead2"]


async def test_every_token_gone(fanout: PushFanout, fcm: FcmStandin, apns: ApnsStandin) -> None:
    apns.failures["dead1"] = "unregistered"
    fcm.failures["gone"] = "unregistered"

    with pytest.raises(PermanentError) as caught:
        await fanout.send(message(("apns", "dead1"), ("fcm", "gone")))

    assert caught.value.reason == "unregistered"
    assert sorted(caught.value.dead_address) == ["dead1", "gone"]


async def test_transient_on_one_platform_retries_the_delivery(
    fanout: PushFanout, fcm: FcmStandin, apns: ApnsStandin
) -> None:
    apns.failures["dead1"] = "unregistered"
    fcm.failures["busy"] = "quota"

    with pytest.raises(TransientError) as caught:
        await fanout.send(message(("apns", "dead1"), ("fcm", "busy")))

    assert caught.value.retry_after == 7.0


async def test_platform_without_provider_is_skipped(fcm: FcmStandin) -> None:
    provider = FcmProvider(
        spec("fcm", {"service_account": fcm.service_account(), "base_url": fcm.url}), ENV
    )
    try:
        result = await PushFanout({"fcm": provider}).send(
            message(("apns", "aa11"), ("fcm", "tok-a"))
        )
    finally:
        await provider.aclose()

    assert result.provider_message_id
    assert [m["token"] for m in fcm.received] == ["tok-a"]


async def test_nothing_sendable(fanout: PushFanout) -> None:
    with pytest.raises(PermanentError) as caught:
        await PushFanout({}).send(message(("apns", "aa11")))
    assert caught.value.reason == "no_provider"

    with pytest.raises(PermanentError) as caught:
        await fanout.send(message(("webos", "x")))
    assert caught.value.reason == "no_provider"

    with pytest.raises(PermanentError) as caught:
        await fanout.send(message())
    assert caught.value.reason == "no_address"


async def test_fanout_leaves_the_providers_open(
    fanout: PushFanout, fcm: FcmStandin, apns: ApnsStandin
) -> None:
    await fanout.send(message(("apns", "aa11"), ("fcm", "tok-a")))
    await fanout.aclose()

    await fanout.send(message(("apns", "bb22"), ("fcm", "tok-b")))

    assert len(fcm.received) == len(apns.received) == 2


def test_push_targets_skip_malformed_entries_and_repeats() -> None:
    to = [
        {"platform": "fcm", "token": "a"},
        {"platform": "fcm", "token": "a"},
        {"platform": "apns"},
        {"token": "b"},
        "junk",
        {"platform": "apns", "token": ""},
        {"platform": "apns", "token": "c"},
    ]
    assert push_targets(to) == [("fcm", "a"), ("apns", "c")]
    assert push_targets("a-string") == []


def gone(token: str) -> PermanentError:
    return PermanentError("gone", reason="unregistered", dead_address=token)


def test_combine_success_carries_dead_tokens() -> None:
    outcomes: list[SendResult | ProviderError] = [
        gone("x"),
        SendResult(provider_message_id=None),
        SendResult(provider_message_id="m2", dead_addresses=("y",)),
        TransientError("busy"),
    ]
    assert combine(outcomes) == SendResult(provider_message_id="m2", dead_addresses=("x", "y"))


def test_combine_longest_retry_after_wins() -> None:
    slow, fast = TransientError("a", retry_after=30), TransientError("b", retry_after=2)
    with pytest.raises(TransientError) as caught:
        combine([fast, gone("x"), slow, PermanentError("no", reason="bad_credentials")])
    assert caught.value is slow


def test_combine_permanent_keeps_the_dead_tokens() -> None:
    with pytest.raises(PermanentError) as caught:
        combine([gone("x"), PermanentError("no", reason="bad_credentials")])
    assert caught.value.reason == "bad_credentials"
    assert caught.value.dead_address == ["x"]


def test_combine_nothing() -> None:
    with pytest.raises(PermanentError) as caught:
        combine([])
    assert caught.value.reason == "no_address"


def test_parse_retry_after() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("-3") == 0.0
    assert 60 < (parse_retry_after(format_datetime(later, usegmt=True)) or 0) <= 120
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
