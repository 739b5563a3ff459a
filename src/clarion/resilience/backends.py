"""The shared-state backends of one process: rate limiter and circuit breakers.

With a Redis URL (``settings.effective_redis_url``: one server, or a Redis Cluster) they
live in Redis and are shared by every process of the deployment; without one, in this
process (the embedded default).
"""

from __future__ import annotations

from dataclasses import dataclass

from clarion.broker.redis_client import RedisClient, connect
from clarion.config import Settings
from clarion.resilience.breaker import BreakerPolicy, CircuitBreaker, MemoryBreaker, RedisBreaker
from clarion.resilience.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter

_MAX_CONNECTIONS = 64
_POOL_TIMEOUT = 10.0


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        threshold=settings.breaker_failure_threshold,
        min_calls=settings.breaker_min_calls,
        window=settings.breaker_window,
        cooldown=settings.breaker_cooldown,
        # The probe permit outlives the longest call the worker allows (see send_timeout).
        probe_ttl=send_timeout(settings) + 5.0,
    )


def send_timeout(settings: Settings) -> float:
    """The bound on one provider call, for providers that ignore their own timeout."""
    return settings.webhook_timeout * 2


@dataclass
class Backends:
    limiter: RateLimiter
    breakers: CircuitBreaker
    redis: RedisClient | None = None

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def open_backends(settings: Settings) -> Backends:
    """Create the backends (no connection is made until first use)."""
    policy = breaker_policy(settings)
    url = settings.effective_redis_url
    if url is None:
        return Backends(MemoryRateLimiter(), MemoryBreaker(policy))
    client = connect(url, max_connections=_MAX_CONNECTIONS, pool_timeout=_POOL_TIMEOUT)
    return Backends(RedisRateLimiter(client), RedisBreaker(client, policy), client)
