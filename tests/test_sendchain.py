"""The send chain: breaker-driven failover, pacing, timeouts, and the critical fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from redis.asyncio import Redis

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers.base import Provider, ProviderSpec, SendResult
from clarion.resilience.breaker import BreakerKey, BreakerPolicy, MemoryBreaker, RedisBreaker
from clarion.resilience.ratelimit import MemoryRateLimiter, RedisRateLimiter
from clarion.resilience.sendchain import (
    Failed,
    NoHealthyProvider,
    SendChain,
    Sent,
    Throttled,
    fallback_channel,
)

POLICY = BreakerPolicy(min_calls=4, threshold=0.5, window=10.0, cooldown=60.0, probe_ttl=5.0)
TENANT = "ten_a"


class FakeProvider(Provider):
    """Answers as told: ``ok``, ``transient``, ``permanent`` or ``hang``."""

    kind = "fake"

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.sent: list[str] = []

    async def send(self, message: Delivery) -> SendResult:
        self.sent.append(message.id)
        if self.mode == "transient":
            raise TransientError("503 from the service", reason="http_503")
        if self.mode == "permanent":
            raise PermanentError("no such mailbox", reason="provider_rejected")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return SendResult(provider_message_id=f"pm-{message.id}")


@dataclass
class Lookup:
    providers: dict[str, Provider]

    def ready(self, tenant_id: str, channel: str, name: str) -> Provider | None:
        return self.providers.get(name)

    async def sender(self, tenant_id: str, channel: str, name: str) -> Provider:
        return self.providers[name]


@dataclass(frozen=True)
class Spec:
    name: str
    rate_limit_per_second: float | None = None


def message(n: int = 1, channel: str = "email") -> Delivery:
    return Delivery(
        id=f"dlv_{n}",
        tenant=TENANT,
        notification="ntf_1",
        recipient="u",
        channel=channel,
        to="u@example.com",
        content={"subject": "s", "text": "t"},
        priority="normal",
        attempt=1,
    )


@pytest.fixture
def fakes() -> dict[str, FakeProvider]:
    return {"primary": FakeProvider(), "backup": FakeProvider(), "webhook": FakeProvider()}


@pytest.fixture
def chain(fakes: dict[str, FakeProvider]) -> SendChain:
    lookup = Lookup(dict(fakes))
    return SendChain(MemoryBreaker(POLICY), MemoryRateLimiter(), lookup, timeout=0.2)


CANDIDATES = [Spec("primary"), Spec("backup")]


async def test_sends_through_the_first_provider(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    outcome = await chain.send(message(), CANDIDATES)
    assert outcome == Sent("primary", SendResult(provider_message_id="pm-dlv_1"))
    assert fakes["backup"].sent == []


async def test_failover_happens_once_the_breaker_opens(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    fakes["primary"].mode = "transient"
    for n in range(POLICY.min_calls):
        outcome = await chain.send(message(n), CANDIDATES)
        # A transient error ends the attempt: no second provider in the same attempt.
        assert isinstance(outcome, Failed)
        assert outcome.provider == "primary"
        assert isinstance(outcome.error, TransientError)
    assert fakes["backup"].sent == []
    outcome = await chain.send(message(99), CANDIDATES)
    assert isinstance(outcome, Sent)
    assert outcome.provider == "backup"
    assert fakes["primary"].sent == [f"dlv_{n}" for n in range(POLICY.min_calls)]


async def test_no_healthy_provider_when_every_breaker_is_open(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    fakes["primary"].mode = fakes["backup"].mode = "transient"
    for n in range(POLICY.min_calls):
        await chain.send(message(n), [Spec("primary")])
        await chain.send(message(n), [Spec("backup")])
    outcome = await chain.send(message(), CANDIDATES)
    assert isinstance(outcome, NoHealthyProvider)
    assert outcome.reason == "no_healthy_provider"
    assert 0 < outcome.retry_in <= POLICY.cooldown
    assert len(fakes["primary"].sent) == len(fakes["backup"].sent) == POLICY.min_calls


async def test_permanent_errors_do_not_open_the_breaker(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    fakes["primary"].mode = "permanent"
    for n in range(POLICY.min_calls * 2):
        outcome = await chain.send(message(n), CANDIDATES)
        assert isinstance(outcome, Failed)
        assert isinstance(outcome.error, PermanentError)
        assert outcome.provider == "primary"


async def test_a_call_without_answer_is_a_transient_timeout(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    fakes["primary"].mode = "hang"
    outcome = await chain.send(message(), CANDIDATES)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, TransientError)
    assert outcome.error.reason == "timeout"


async def test_unknown_provider_and_empty_chain_are_permanent(chain: SendChain) -> None:
    outcome = await chain.send(message(), [Spec("nobody")])
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, PermanentError)
    assert outcome.error.reason == "no_provider"
    empty = await chain.send(message(), [])
    assert isinstance(empty, Failed)
    assert isinstance(empty.error, PermanentError)


async def test_webhook_destinations_are_not_one_breaker(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    fakes["webhook"].mode = "transient"
    for n in range(POLICY.min_calls * 2):
        outcome = await chain.send(message(n, "webhook"), [Spec("webhook")])
        assert isinstance(outcome, Failed)
    assert len(fakes["webhook"].sent) == POLICY.min_calls * 2


async def test_a_full_rate_limit_queue_is_throttled(
    chain: SendChain, fakes: dict[str, FakeProvider]
) -> None:
    slow = [Spec("primary", rate_limit_per_second=0.01)]
    assert isinstance(await chain.send(message(1), slow), Sent)
    outcome = await chain.send(message(2), slow)
    assert isinstance(outcome, Throttled)
    assert outcome.provider == "primary"
    assert outcome.retry_in > 5
    assert fakes["primary"].sent == ["dlv_1"]


class PerDestination(FakeProvider):
    """A service that takes one send per ``slow`` seconds per destination (its ``to``)."""

    def pacing(self, message: Delivery) -> list[tuple[str, float]]:
        return [(f"to:{message.to}", 0.01)]


async def test_a_providers_own_pace_per_destination_is_kept() -> None:
    provider = PerDestination()
    chain = SendChain(
        MemoryBreaker(POLICY), MemoryRateLimiter(), Lookup({"p": provider}), timeout=0.2
    )
    first = msgspec.structs.replace(message(1), to="C0A")
    assert isinstance(await chain.send(first, [Spec("p")]), Sent)
    # Another destination has a slot of its own; the same one has to wait its turn.
    other = msgspec.structs.replace(message(2), to="C0B")
    assert isinstance(await chain.send(other, [Spec("p")]), Sent)
    again = await chain.send(msgspec.structs.replace(message(3), to="C0A"), [Spec("p")])
    assert isinstance(again, Throttled)
    assert (again.provider, again.reason) == ("p", "rate_limited")
    assert provider.sent == ["dlv_1", "dlv_2"]  # not attempted: no attempt used


async def test_works_with_provider_specs(chain: SendChain) -> None:
    spec = ProviderSpec(TENANT, "primary", "smtp", "email", {}, rate_limit_per_second=100)
    assert isinstance(await chain.send(message(), [spec]), Sent)


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[list[Redis]]:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    yield clients
    for client in clients:
        await client.aclose()


async def test_failover_is_shared_by_every_process(
    redis_clients: list[Redis], fakes: dict[str, FakeProvider]
) -> None:
    """Process A's failures open the breaker; process B then sends through the backup."""
    a, b = (
        SendChain(
            RedisBreaker(client, POLICY), RedisRateLimiter(client), Lookup(dict(fakes)), timeout=1
        )
        for client in redis_clients
    )
    fakes["primary"].mode = "transient"
    for n in range(POLICY.min_calls):
        assert isinstance(await a.send(message(n), CANDIDATES), Failed)
    outcome = await b.send(message(99), CANDIDATES)
    assert isinstance(outcome, Sent)
    assert outcome.provider == "backup"
    breaker = RedisBreaker(redis_clients[0], POLICY)
    assert await breaker.state(BreakerKey(TENANT, "primary")) == "open"


def test_critical_fallback_channel() -> None:
    mapping = {"push": "sms", "sms": "email", "email": "push"}
    assert fallback_channel("push", critical=True, fallbacks=mapping) == "sms"
    assert fallback_channel("push", critical=False, fallbacks=mapping) is None
    assert fallback_channel("webpush", critical=True, fallbacks=mapping) is None
    assert fallback_channel("push", critical=True, fallbacks=mapping, unavailable={"sms"}) == (
        "email"
    )
    # Every channel of the loop is down: wait, do not go round.
    everything = {"sms", "email", "push"}
    assert fallback_channel("push", critical=True, fallbacks=mapping, unavailable=everything) is (
        None
    )
