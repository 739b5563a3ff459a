"""GCRA rate limits: one algorithm, in-process or in Redis (one Lua script).

The generic cell rate algorithm keeps one number per key, the theoretical arrival time
(TAT) of the next request. With an emission interval ``T = 1 / rate`` and room for
``burst`` requests at once, a request of ``cost`` is allowed when
``max(TAT, now) + cost * T - burst * T <= now``; allowing it moves TAT by ``cost * T``.
A refused request changes nothing.

Three uses:

* intake quotas (:meth:`RateLimiter.try_acquire`): allowed or refused, with
  ``retry_after``, ``remaining`` and ``reset`` for the ``RateLimit-*`` headers;
* provider pacing (:meth:`RateLimiter.acquire`): with ``max_wait``, a request that would be
  allowed within that many seconds *reserves* its slot and the caller sleeps until it. With
  ``burst = 1`` reserved slots are at least ``T`` apart, so no window of one second holds
  more than ``rate`` sends;
* per recipient and category caps (:func:`recipient_category_limit`).
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

from clarion.broker.redis_client import RedisClient

# Pacing keeps this fraction clear of a provider's limit, so that jitter between our
# clock and the provider's (network, scheduling, a busy event loop after the slot) cannot
# put one send too many into any one-second window the provider counts: rate + 1 sends
# span 1.087 s, which leaves about 45 ms for a send to reach the provider late after the
# tolerance below.
PACE_MARGIN = 0.08
# How long a send may wait for its slot before it is handed back to be retried later.
PACE_MAX_WAIT = 5.0
# How late after its slot a paced send may still go. Slots are spaced by the margin above:
# rate + 1 sends span 1 / (1 - PACE_MARGIN) s, over a second by more than this tolerance.
LATE_TOLERANCE = PACE_MARGIN / 2
_LATE_RETRIES = 3
# Times are doubles near 1.7e9 s (a few tenths of a microsecond apart) stored to the
# microsecond: that noise must not refuse a request due exactly now (seconds), nor cost a
# whole request in ``remaining`` (requests).
_SLACK = 1e-5
_EPSILON = 1e-3


class Decision(NamedTuple):
    """The answer to one request for capacity.

    ``retry_after``: when refused, seconds until the same request would be allowed; when a
    reservation was granted, seconds to wait before acting on it; else 0.
    ``remaining``: requests of cost 1 still allowed now. ``reset``: seconds until the
    bucket is whole again.
    """

    allowed: bool
    retry_after: float
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class Take:
    """One request for capacity: ``cost`` units of ``key`` at ``rate`` per second."""

    key: str
    rate: float
    burst: int
    cost: int = 1
    max_wait: float = 0.0

    @property
    def interval(self) -> float:
        return 1.0 / self.rate


def gcra(tat: float | None, now: float, take: Take) -> tuple[Decision, float | None]:
    """Decide ``take`` given the stored TAT; returns the decision and the TAT to store
    (``None``: leave it as it was). The Lua script below is this function, line for line."""
    interval = take.interval
    tolerance = interval * take.burst
    tat = now if tat is None or tat < now else tat
    new_tat = tat + interval * take.cost
    wait = new_tat - tolerance - now
    if wait > _SLACK and wait > take.max_wait:
        remaining = max(0, math.floor((now - (tat - tolerance)) / interval + _EPSILON))
        return Decision(False, wait, remaining, tat - now), None
    remaining = math.floor(-wait / interval + _EPSILON) if wait < 0 else 0
    return Decision(True, max(wait, 0.0), remaining, new_tat - now), new_tat


class RateLimiter(ABC):
    """Shared GCRA buckets. Implementations provide :meth:`take_many`."""

    @abstractmethod
    async def take_many(self, takes: Sequence[Take]) -> list[Decision]:
        """Decide each request in order (one round trip for a shared backend)."""

    async def try_acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` units now, or refuse without taking anything."""
        [decision] = await self.take_many([Take(key, rate, burst, cost)])
        return decision

    async def acquire(
        self, key: str, rate: float, burst: int = 1, *, max_wait: float = PACE_MAX_WAIT
    ) -> Decision:
        """Pace: reserve the next slot of ``key`` and sleep until it comes.

        Refused (``allowed`` False, nothing reserved) when the next free slot is more than
        ``max_wait`` seconds away; the caller then puts its work back for later. A sleeper
        that wakes more than ``LATE_TOLERANCE`` after its slot (a busy event loop) gives the
        slot up and reserves another: sending late could crowd the slots after it into one
        second.
        """
        paced = Take(key, rate * (1 - PACE_MARGIN), burst, 1, max_wait)
        for _ in range(_LATE_RETRIES):
            decision, deadline = await self._reserve(paced)
            if not decision.allowed:
                return decision
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - deadline <= LATE_TOLERANCE:
                return decision
        return Decision(False, paced.interval, 0, paced.interval)

    async def _reserve(self, take: Take) -> tuple[Decision, float]:
        """The decision and, if granted, the ``time.monotonic()`` at which its slot comes."""
        [decision] = await self.take_many([take])
        return decision, time.monotonic() + decision.retry_after

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def recipient_category_key(tenant_id: str, recipient_id: str, category: str) -> str:
    return f"mph:{tenant_id}:{category}:{recipient_id}"


def recipient_category_take(
    tenant_id: str, recipient_id: str, category: str, max_per_hour: int
) -> Take:
    """The request one delivery makes against its category's ``max_per_hour`` for its
    recipient: a bucket of ``max_per_hour`` refilled evenly over the hour."""
    return Take(
        recipient_category_key(tenant_id, recipient_id, category),
        rate=max_per_hour / 3600.0,
        burst=max_per_hour,
    )


async def recipient_category_limit(
    limiter: RateLimiter, tenant_id: str, recipient_id: str, category: str, max_per_hour: int
) -> bool:
    """Whether one more delivery of ``category`` to the recipient fits its hourly cap; a
    ``False`` delivery is suppressed with reason ``rate_limited``. For a batch, build the
    requests with :func:`recipient_category_take` and call ``limiter.take_many`` once."""
    take = recipient_category_take(tenant_id, recipient_id, category, max_per_hour)
    [decision] = await limiter.take_many([take])
    return decision.allowed


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process (the embedded default). ``clock`` is monotonic seconds."""

    _PRUNE_EVERY = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._calls = 0

    async def take_many(self, takes: Sequence[Take]) -> list[Decision]:
        now = self._clock()
        decisions = []
        for take in takes:
            decision, new_tat = gcra(self._tats.get(take.key), now, take)
            if new_tat is not None:
                self._tats[take.key] = new_tat
            decisions.append(decision)
        self._calls += len(takes)
        if self._calls >= self._PRUNE_EVERY:
            self._prune(now)
        return decisions

    async def _reserve(self, take: Take) -> tuple[Decision, float]:
        # Decided and timed without a suspension in between: the slot time is exact.
        now = time.monotonic()
        [decision] = await self.take_many([take])
        return decision, now + decision.retry_after

    def _prune(self, now: float) -> None:
        # A bucket whose TAT has passed is whole again: forgetting it changes nothing.
        self._calls = 0
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}


# KEYS[1]: the bucket. ARGV: interval, burst, cost, max_wait (seconds).
# Returns {allowed, retry_after, remaining, reset, server now}; numbers as strings, since
# Redis turns Lua numbers into integers. The clock is the server's, the same for every
# process.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local eps = 1e-3
local slack = 1e-5
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - tolerance - now
if wait > slack and wait > max_wait then
    local remaining = math.floor((now - (tat - tolerance)) / interval + eps)
    if remaining < 0 then remaining = 0 end
    return {0, string.format('%.6f', wait), remaining, string.format('%.6f', tat - now),
            string.format('%.6f', now)}
end
local ttl = math.ceil((new_tat - now) * 1000)
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', ttl)
local remaining = 0
if wait < 0 then remaining = math.floor(-wait / interval + eps) end
if wait < 0 then wait = 0 end
return {1, string.format('%.6f', wait), remaining, string.format('%.6f', new_tat - now),
        string.format('%.6f', now)}
"""


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis, shared by every process; one script call per request, pipelined."""

    def __init__(self, client: RedisClient, prefix: str = "clarion:rl") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(GCRA_SCRIPT)
        self._offset = _ClockOffset()

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{{{key}}}"

    @staticmethod
    def _args(take: Take) -> list[float | int]:
        return [take.interval, take.burst, take.cost, take.max_wait]

    async def take_many(self, takes: Sequence[Take]) -> list[Decision]:
        if len(takes) == 1:
            [take] = takes
            replies = [await self._script(keys=[self._key(take.key)], args=self._args(take))]
        else:
            replies = await self._pipelined(takes)
        return [_decision(reply) for reply in replies]

    async def _pipelined(self, takes: Sequence[Take]) -> list[Any]:
        """One round trip of ``EVALSHA``s (in a cluster, one per node, side by side).
        redis-py's pipelined scripts first ask the server whether each script is loaded
        (``SCRIPT EXISTS``), a second round trip every time; here the calls that meet a
        server without the script (restarted, or a replica just promoted) answer
        ``NOSCRIPT``, and those alone are sent again once it is loaded: a call that went
        through is never charged twice."""
        replies = await self._evalsha_each(takes)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._client.script_load(GCRA_SCRIPT)
            again = await self._evalsha_each([takes[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _evalsha_each(self, takes: Sequence[Take]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for take in takes:
                pipe.execute_command(
                    "EVALSHA", self._script.sha, 1, self._key(take.key), *self._args(take)
                )
            return list(await pipe.execute(raise_on_error=False))

    async def _reserve(self, take: Take) -> tuple[Decision, float]:
        reply = await self._script(keys=[self._key(take.key)], args=self._args(take))
        offset = self._offset.observe(time.monotonic() - float(reply[4]))
        decision = _decision(reply)
        # The slot in server time, moved to our clock: one offset for every reply, so the
        # slots keep their spacing whatever each reply's own delay was.
        return decision, float(reply[4]) + decision.retry_after + offset


def _decision(reply: Sequence[Any]) -> Decision:
    allowed, retry_after, remaining, reset = reply[:4]
    return Decision(bool(int(allowed)), float(retry_after), int(remaining), float(reset))


class _ClockOffset:
    """Our monotonic clock minus the server's. Each reply arrives some delay after the
    server read its clock, so the smallest difference seen is the truest; it is taken over
    the last one or two minutes, to follow the clocks' drift."""

    _PERIOD = 60.0

    def __init__(self) -> None:
        self._current = math.inf
        self._previous = math.inf
        self._since = time.monotonic()

    def observe(self, sample: float) -> float:
        now = time.monotonic()
        if now - self._since > self._PERIOD:
            self._previous, self._current, self._since = self._current, math.inf, now
        self._current = min(self._current, sample)
        return min(self._current, self._previous)
