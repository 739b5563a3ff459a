"""Circuit breakers, in-process and shared through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from clarion.broker.redis_client import RedisClient, connect
from clarion.resilience.breaker import (
    BreakerKey,
    BreakerPolicy,
    CircuitBreaker,
    MemoryBreaker,
    RedisBreaker,
)
from conftest import CLUSTER
from harness import Harness

KEY = BreakerKey("ten_a", "smtp-main")
POLICY = BreakerPolicy(threshold=0.5, min_calls=20, window=10.0, cooldown=0.3, probe_ttl=5.0)
# Shared through Redis, a state read right after a change is a round trip or two away; on a
# busy machine (a six-node cluster on two cores) that can take a good part of a short
# cool-down, so these wait a longer one.
SHARED = BreakerPolicy(threshold=0.5, min_calls=20, window=10.0, cooldown=1.0, probe_ttl=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def shared_client(url: str) -> RedisClient:
    """A process's client of Redis, or of a Redis Cluster, as resilience/backends.py makes it."""
    return connect(url, max_connections=8, pool_timeout=5)


@pytest.fixture(params=["memory", "redis", CLUSTER])
async def breakers(request: pytest.FixtureRequest) -> AsyncIterator[list[CircuitBreaker]]:
    """Two breakers that share state, as two worker processes do through Redis; the
    in-process breaker is one process's, so both entries are the same object."""
    if request.param == "memory":
        breaker = MemoryBreaker(POLICY)
        yield [breaker, breaker]
        return
    url = request.getfixturevalue(
        "redis_cluster_url" if request.param == "redis-cluster" else "redis_url"
    )
    clients = [shared_client(url), shared_client(url)]
    yield [RedisBreaker(client, SHARED) for client in clients]
    for client in clients:
        await client.aclose()


async def _record(breaker: CircuitBreaker, ok: int, failed: int, key: BreakerKey = KEY) -> None:
    for _ in range(ok):
        await breaker.record(key, True)
    for _ in range(failed):
        await breaker.record(key, False)


async def _until_half_open(breaker: CircuitBreaker) -> None:
    """The cool-down is a clock, not work: wait it out."""
    status = await breaker.status(KEY)
    assert status.state == "open"
    await asyncio.sleep(status.retry_in + 0.02)
    assert await breaker.state(KEY) == "half_open"


async def test_opens_only_after_min_calls(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    await _record(first, 0, 19)
    assert await second.state(KEY) == "closed"
    assert await second.allow(KEY)
    await _record(second, 0, 1)
    assert await first.state(KEY) == "open"
    assert not await first.allow(KEY)
    assert not await second.allow(KEY)
    status = await first.status(KEY)
    assert 0 < status.retry_in <= max(POLICY.cooldown, SHARED.cooldown)


async def test_opens_at_the_failure_threshold(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    await _record(first, 11, 9)  # 20 calls, 45 % failed
    assert await first.state(KEY) == "closed"
    await _record(second, 0, 1)  # 21 calls, 47.6 %
    assert await second.state(KEY) == "closed"
    status = await second.status(KEY)
    assert (status.calls, status.failure_rate) == (21, pytest.approx(10 / 21, abs=1e-3))
    await _record(first, 0, 1)  # 22 calls, 50 %
    assert await first.state(KEY) == "open"


async def test_other_providers_and_tenants_are_unaffected(
    breakers: list[CircuitBreaker],
) -> None:
    first, _ = breakers
    await _record(first, 0, 20)
    assert await first.state(KEY) == "open"
    assert await first.allow(BreakerKey("ten_a", "ses-backup"))
    assert await first.allow(BreakerKey("ten_b", "smtp-main"))


async def test_half_open_lets_exactly_one_probe_through(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    await _record(first, 0, 20)
    await _until_half_open(second)
    probes = await asyncio.gather(*(b.allow(KEY) for b in [first, second] * 5))
    assert sum(probes) == 1
    assert not await first.allow(KEY)
    await second.record(KEY, True)
    assert await first.state(KEY) == "closed"
    assert await first.allow(KEY)
    assert await second.allow(KEY)
    status = await first.status(KEY)
    assert status.calls == 0  # closing starts a fresh window


async def test_failed_probe_opens_again(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    await _record(first, 0, 20)
    await _until_half_open(first)
    assert await first.allow(KEY)
    await first.record(KEY, False)
    assert await second.state(KEY) == "open"
    assert not await second.allow(KEY)
    await _until_half_open(second)
    assert await second.allow(KEY)


async def test_an_open_breaker_shows_what_opened_it(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    before = time.time()
    await _record(first, 8, 12)  # 20 calls, 60 % failed: opens
    after = time.time()
    status = await second.status(KEY)
    assert (status.state, status.calls, status.failures) == ("open", 20, 12)
    assert status.failure_rate == 0.6
    assert status.opened_at is not None
    assert before - 1 <= status.opened_at <= after + 1
    opened_at = status.opened_at
    # A failed probe keeps it open: still the figures (and time) that opened it.
    await _until_half_open(first)
    half_open = await first.status(KEY)
    assert (half_open.calls, half_open.failures, half_open.opened_at) == (20, 12, opened_at)
    assert await first.allow(KEY)
    await first.record(KEY, False)
    reopened = await second.status(KEY)
    assert (reopened.state, reopened.calls, reopened.failures) == ("open", 20, 12)
    assert reopened.opened_at == opened_at
    # A successful probe closes it: a fresh window, nothing open.
    await _until_half_open(second)
    assert await second.allow(KEY)
    await second.record(KEY, True)
    closed = await first.status(KEY)
    assert (closed.state, closed.calls, closed.failures, closed.opened_at) == (
        "closed",
        0,
        0,
        None,
    )


async def test_outcomes_during_the_cooldown_change_nothing(
    breakers: list[CircuitBreaker],
) -> None:
    first, _ = breakers
    await _record(first, 0, 20)
    await _record(first, 5, 0)  # calls begun before it opened, finishing late
    assert await first.state(KEY) == "open"


async def test_states_lists_a_tenants_breakers(breakers: list[CircuitBreaker]) -> None:
    first, second = breakers
    await _record(first, 3, 1)
    await _record(second, 0, 20, BreakerKey("ten_a", "twilio"))
    await _record(second, 1, 0, BreakerKey("ten_b", "twilio"))
    states = await second.states("ten_a")
    assert set(states) == {"smtp-main", "twilio"}
    assert states["smtp-main"].state == "closed"
    assert (states["smtp-main"].calls, states["smtp-main"].failure_rate) == (4, 0.25)
    assert states["twilio"].state == "open"
    assert set(await first.states("ten_b")) == {"twilio"}
    assert await first.states("ten_c") == {}


async def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker = MemoryBreaker(POLICY, clock)
    await _record(breaker, 0, 19)
    clock.now += 10.5
    await _record(breaker, 0, 1)
    status = await breaker.status(KEY)
    assert (status.state, status.calls) == ("closed", 1)


async def test_health_endpoint_shows_the_callers_breakers(app: Harness) -> None:
    breakers = app.ctx.resilience.breakers
    failing = BreakerKey(app.tenant_id, "smtp-main")
    before = datetime.now(UTC)
    for _ in range(app.settings.breaker_min_calls):
        await breakers.record(failing, False)
    await breakers.record(BreakerKey(app.tenant_id, "sendgrid"), True)
    await breakers.record(BreakerKey("ten_someone_else", "twilio"), False)
    response = await app.client.get("/v1/health/providers", headers=app.auth)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["provider"] for item in data] == ["sendgrid", "smtp-main"]
    assert data[0] == {
        "provider": "sendgrid",
        "state": "closed",
        "failure_rate": 0.0,
        "calls": 1,
        "failures": 0,
        "window_seconds": app.settings.breaker_window,
        "opened_at": None,
        "next_probe_at": None,
        "retry_in": 0.0,
    }
    shown = data[1]
    assert shown["state"] == "open"
    # The figures that opened it, not the window emptied when it opened.
    calls = app.settings.breaker_min_calls
    assert (shown["calls"], shown["failures"], shown["failure_rate"]) == (calls, calls, 1.0)
    assert shown["window_seconds"] == app.settings.breaker_window
    opened_at = datetime.fromisoformat(shown["opened_at"])
    next_probe_at = datetime.fromisoformat(shown["next_probe_at"])
    assert before.timestamp() - 1 <= opened_at.timestamp() <= time.time() + 1
    assert 0 < shown["retry_in"] <= app.settings.breaker_cooldown
    assert opened_at < next_probe_at
    assert next_probe_at.timestamp() <= opened_at.timestamp() + app.settings.breaker_cooldown + 1
    unauthenticated = await app.client.get("/v1/health/providers")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "unauthorized"
