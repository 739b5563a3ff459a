"""GCRA rate limits, in-process and in Redis: quotas, pacing, hourly caps."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from clarion.broker.redis_client import RedisClient, connect
from clarion.resilience.ratelimit import (
    PACE_MARGIN,
    Decision,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Take,
    gcra,
    recipient_category_limit,
    recipient_category_take,
)
from conftest import CLUSTER


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shared_client(url: str) -> RedisClient:
    """A process's client of Redis, or of a Redis Cluster, as resilience/backends.py makes it."""
    return connect(url, max_connections=8, pool_timeout=5)


@pytest.fixture(params=["memory", "redis", CLUSTER])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[list[RateLimiter]]:
    """Two limiters sharing their buckets, as two processes would (Redis), or the one
    limiter of the embedded default twice."""
    if request.param == "memory":
        limiter = MemoryRateLimiter()
        yield [limiter, limiter]
        return
    url = request.getfixturevalue(
        "redis_cluster_url" if request.param == "redis-cluster" else "redis_url"
    )
    clients = [shared_client(url), shared_client(url)]
    yield [RedisRateLimiter(client) for client in clients]
    for client in clients:
        await client.aclose()


def test_gcra_allows_the_burst_then_refuses_with_the_wait() -> None:
    take = Take("k", rate=2.0, burst=3)
    tat = None
    decisions: list[Decision] = []
    for _ in range(4):
        decision, new_tat = gcra(tat, 100.0, take)
        tat = new_tat if new_tat is not None else tat
        decisions.append(decision)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.reset == pytest.approx(1.5)
    # Half a second later exactly one more fits.
    decision, _ = gcra(tat, 100.5, take)
    assert decision.allowed
    assert decision.remaining == 0


def test_gcra_cost_larger_than_what_is_left_takes_nothing() -> None:
    take = Take("k", rate=10.0, burst=10, cost=4)
    decision, tat = gcra(None, 0.0, take)
    assert decision.allowed
    assert decision.remaining == 6
    decision, tat = gcra(tat, 0.0, take)
    assert decision.allowed
    assert decision.remaining == 2
    refused, unchanged = gcra(tat, 0.0, take)
    assert not refused.allowed
    assert unchanged is None
    assert refused.remaining == 2
    assert refused.retry_after == pytest.approx(0.2)


def test_memory_limiter_refills_with_time() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)

    async def run() -> list[bool]:
        out = []
        for _ in range(3):
            out.append((await limiter.try_acquire("k", 1.0, 2)).allowed)
        clock.now += 1.0
        out.append((await limiter.try_acquire("k", 1.0, 2)).allowed)
        out.append((await limiter.try_acquire("k", 1.0, 2)).allowed)
        return out

    assert asyncio.run(run()) == [True, True, False, True, False]


async def test_try_acquire_refuses_over_the_burst(limiters: list[RateLimiter]) -> None:
    first, second = limiters
    # Half a token a second: the six calls fit in the two seconds before one comes back,
    # however slowly a busy cluster answers.
    results = [await (first if i % 2 else second).try_acquire("q", 0.5, 5) for i in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[5]
    assert 0 < refused.retry_after <= 2.0 + 1e-3
    assert 0 < refused.reset <= 10.0 + 1e-3
    other = await first.try_acquire("another-key", 0.5, 5)
    assert other.allowed
    assert other.remaining == 4


async def test_take_many_decides_in_order(limiters: list[RateLimiter]) -> None:
    first, _ = limiters
    takes = [Take("m", 1.0, 2), Take("m", 1.0, 2), Take("m", 1.0, 2), Take("n", 1.0, 1)]
    decisions = await first.take_many(takes)
    assert [d.allowed for d in decisions] == [True, True, False, True]


@pytest.mark.parametrize("kind", ["redis", CLUSTER])
async def test_a_batch_after_the_server_lost_its_scripts(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_cluster_url" if kind == "redis-cluster" else "redis_url")
    client = shared_client(url)
    try:
        limiter = RedisRateLimiter(client)
        await client.script_flush()  # as after a restart of Redis
        takes = [Take("lost", 1.0, 2), Take("lost", 1.0, 2), Take("lost", 1.0, 2)]
        decisions = await limiter.take_many(takes)
        assert [d.allowed for d in decisions] == [True, True, False]
    finally:
        await client.aclose()


async def test_acquire_hands_back_when_the_queue_is_too_long(
    limiters: list[RateLimiter],
) -> None:
    first, second = limiters
    assert (await first.acquire("slow", 0.5, 1, max_wait=0.1)).allowed
    refused = await second.acquire("slow", 0.5, 1, max_wait=0.1)
    assert not refused.allowed
    assert refused.retry_after > 1.0
    # Nothing was reserved by the refusal: the next slot is still the same distance away.
    again = await first.acquire("slow", 0.5, 1, max_wait=0.1)
    assert not again.allowed
    assert again.retry_after <= refused.retry_after


def _most_in_any_window(stamps: list[float], width: float) -> int:
    stamps = sorted(stamps)
    return max(
        bisect.bisect_left(stamps, start + width) - index for index, start in enumerate(stamps)
    )


@pytest.mark.slow  # paces in real time for over two seconds per limiter
async def test_pacing_never_exceeds_the_rate_in_any_second(limiters: list[RateLimiter]) -> None:
    """Eight senders in two "processes" pace on one provider limited to 20/s for about two
    seconds: the sends they record never number more than 20 in any one-second window."""
    rate = 20
    stamps: list[float] = []
    end = time.monotonic() + 2.2

    async def sender(limiter: RateLimiter) -> None:
        while time.monotonic() < end:
            decision = await limiter.acquire("provider:t:p", rate, 1, max_wait=5.0)
            assert decision.allowed
            stamps.append(time.monotonic())  # the moment the provider is called

    await asyncio.gather(*(sender(limiters[i % 2]) for i in range(8)))
    assert len(stamps) > rate  # enough sends for full windows to have been checked
    assert _most_in_any_window(stamps, 1.0) <= rate
    # And the pacing margin is small: at least 90% of the rate is used, not wasted.
    assert rate * (1 - PACE_MARGIN) >= 0.9 * rate


async def test_recipient_category_cap(limiters: list[RateLimiter]) -> None:
    limiter, _ = limiters
    allowed = [await recipient_category_limit(limiter, "t", "u1", "marketing", 3) for _ in range(4)]
    assert allowed == [True, True, True, False]
    assert await recipient_category_limit(limiter, "t", "u2", "marketing", 3)
    assert await recipient_category_limit(limiter, "t", "u1", "security", 3)
    assert await recipient_category_limit(limiter, "other", "u1", "marketing", 3)
    # The planner's batch form: one call for many deliveries.
    takes = [recipient_category_take("t", "u3", "marketing", 2) for _ in range(3)]
    assert [d.allowed for d in await limiter.take_many(takes)] == [True, True, False]
    refused = (await limiter.take_many(takes[:1]))[0]
    assert refused.retry_after == pytest.approx(1800, rel=0.01)


@pytest.mark.slow
async def test_a_cluster_node_that_lost_its_scripts_charges_each_bucket_once(
    redis_cluster_url: str,
) -> None:
    """A batch over keys on every master, one of which lost its scripts (restarted, or a
    replica just promoted): only the calls it refused are sent again, so the buckets on
    the other masters are charged once."""
    client = connect(redis_cluster_url, max_connections=8, pool_timeout=5)
    assert isinstance(client, RedisCluster)
    try:
        limiter = RedisRateLimiter(client)
        await limiter.take_many([Take("warm", 1.0, 2)])  # the script is loaded everywhere
        keys = [f"spread-{i}" for i in range(30)]
        masters = {client.get_node_from_key(f"clarion:rl:{{{key}}}").name for key in keys}
        assert len(masters) == 3  # the batch reaches every master
        [lost] = client.get_primaries()[:1]
        await client.execute_command("SCRIPT FLUSH", target_nodes=lost)

        first = await limiter.take_many([Take(key, 0.001, 2) for key in keys])
        second = await limiter.take_many([Take(key, 0.001, 2) for key in keys])
        third = await limiter.take_many([Take(key, 0.001, 2) for key in keys])

        assert all(d.allowed for d in first + second)
        assert not any(d.allowed for d in third)
    finally:
        await client.aclose()
