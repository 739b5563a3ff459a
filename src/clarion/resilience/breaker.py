"""Circuit breakers per (tenant, provider), in-process or shared through Redis.

closed     every call goes through; outcomes fill a rolling window of one-second buckets.
           When the window holds at least ``min_calls`` outcomes and the share of failures
           reaches ``threshold``, the breaker opens.
open       no call goes through for ``cooldown`` seconds.
half_open  exactly one caller, across every process, gets the probe permit (``SET NX`` in
           Redis, lasting ``probe_ttl`` in case the prober dies). Its success closes the
           breaker with an empty window; its failure opens it for another cool-down.

Only outcomes that say something about the provider's health are recorded as failures:
the send chain records a transient error (timeout, 5xx, 429) as ``ok=False`` and a
permanent one (a bad address: the provider answered) as ``ok=True``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clarion.broker.redis_client import RedisClient

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerKey:
    tenant_id: str
    provider: str


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """A breaker's thresholds; a deployment's come from its settings (``breaker_*``,
    resilience/backends.py::breaker_policy), which hold the defaults."""

    threshold: float
    min_calls: int
    window: float
    cooldown: float
    probe_ttl: float
    bucket: float = 1.0

    @property
    def buckets(self) -> int:
        return max(1, math.ceil(self.window / self.bucket))

    def trips(self, calls: int, failures: int) -> bool:
        return calls >= self.min_calls and failures >= self.threshold * calls


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """``retry_in``: seconds until a call may be let through again (0 when closed).

    Closed: ``calls``, ``failures`` and ``failure_rate`` cover the rolling window. Open or
    half-open: they are the figures of the window that opened the breaker (its outcomes are
    cleared when it opens), and ``opened_at`` (Unix seconds) is when it opened; a failed
    probe keeps it open with those figures.
    """

    state: str
    failure_rate: float
    calls: int
    retry_in: float = 0.0
    failures: int = 0
    opened_at: float | None = None


def _status(
    state: str, calls: int, failures: int, retry_in: float, opened_at: float | None = None
) -> BreakerStatus:
    rate = failures / calls if calls else 0.0
    return BreakerStatus(state, round(rate, 4), calls, max(0.0, retry_in), failures, opened_at)


class CircuitBreaker(ABC):
    """The breakers of every (tenant, provider)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy

    @abstractmethod
    async def allow(self, key: BreakerKey) -> bool:
        """Whether a call may go to this provider now (in half-open: the one probe)."""

    @abstractmethod
    async def record(self, key: BreakerKey, ok: bool) -> None:
        """The outcome of a call that :meth:`allow` let through."""

    @abstractmethod
    async def status(self, key: BreakerKey) -> BreakerStatus:
        """State, failure rate and calls in the window."""

    @abstractmethod
    async def states(self, tenant_id: str) -> dict[str, BreakerStatus]:
        """The breakers of a tenant's providers that have seen calls, by provider name."""

    async def state(self, key: BreakerKey) -> str:
        return (await self.status(key)).state

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# -- in-process ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Circuit:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [calls, failures]
    tripped: bool = False
    open_until: float = 0.0
    probe_until: float = 0.0
    # What opened it: calls and failures in the window, and when (Unix seconds).
    opened_by: tuple[int, int] = (0, 0)
    opened_at: float = 0.0


class MemoryBreaker(CircuitBreaker):
    """Breakers of this process (the embedded default). ``clock`` is monotonic seconds."""

    def __init__(
        self,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(policy)
        self._clock = clock
        self._wall = wall
        self._circuits: dict[BreakerKey, _Circuit] = {}

    def _window(self, circuit: _Circuit, now: float) -> tuple[int, int]:
        oldest = math.floor(now / self.policy.bucket) - self.policy.buckets + 1
        for bucket in [b for b in circuit.buckets if b < oldest]:
            del circuit.buckets[bucket]
        calls = sum(c for c, _ in circuit.buckets.values())
        return calls, sum(f for _, f in circuit.buckets.values())

    async def allow(self, key: BreakerKey) -> bool:
        circuit = self._circuits.get(key)
        if circuit is None or not circuit.tripped:
            return True
        now = self._clock()
        if now < circuit.open_until or now < circuit.probe_until:
            return False
        circuit.probe_until = now + self.policy.probe_ttl
        return True

    def _open(self, circuit: _Circuit, now: float, window: tuple[int, int] | None) -> None:
        """Open ``circuit``: tripped by ``window`` (calls, failures), or by a failed probe
        (None), which keeps the figures and the time of the first opening."""
        if window is not None:
            circuit.opened_by, circuit.opened_at = window, self._wall()
        circuit.tripped, circuit.open_until, circuit.probe_until = (
            True,
            now + self.policy.cooldown,
            0,
        )
        circuit.buckets.clear()

    async def record(self, key: BreakerKey, ok: bool) -> None:
        now = self._clock()
        circuit = self._circuits.setdefault(key, _Circuit())
        if circuit.tripped:
            if now < circuit.open_until:
                return  # calls begun before it opened say nothing new
            if ok:
                self._circuits[key] = _Circuit()
            else:
                self._open(circuit, now, None)
            return
        counts = circuit.buckets.setdefault(math.floor(now / self.policy.bucket), [0, 0])
        counts[0] += 1
        counts[1] += 0 if ok else 1
        window = self._window(circuit, now)
        if self.policy.trips(*window):
            self._open(circuit, now, window)

    async def status(self, key: BreakerKey) -> BreakerStatus:
        circuit = self._circuits.get(key)
        if circuit is None:
            return _status(CLOSED, 0, 0, 0)
        now = self._clock()
        calls, failures = self._window(circuit, now)
        if not circuit.tripped:
            return _status(CLOSED, calls, failures, 0)
        calls, failures = circuit.opened_by
        if now < circuit.open_until:
            return _status(OPEN, calls, failures, circuit.open_until - now, circuit.opened_at)
        return _status(HALF_OPEN, calls, failures, circuit.probe_until - now, circuit.opened_at)

    async def states(self, tenant_id: str) -> dict[str, BreakerStatus]:
        keys = [k for k in self._circuits if k.tenant_id == tenant_id]
        return {k.provider: await self.status(k) for k in keys}


# -- Redis ---------------------------------------------------------------------------------

# KEYS: trip, open, probe. ARGV: probe ttl (ms). 1 when the call may go.
_ALLOW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if redis.call('PTTL', KEYS[2]) > 0 then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: window, trip, open, probe. ARGV: ok (1|0), bucket ms, buckets, min calls,
# threshold, cooldown ms, trip ttl ms. Returns the state after the outcome. The trip key
# holds what opened the breaker: "calls:failures:opened at (Unix ms)"; a failed probe
# keeps it.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ok = ARGV[1] == '1'
local cooldown = tonumber(ARGV[6])
local function trip(figures)
    redis.call('DEL', KEYS[1], KEYS[4])
    if figures then
        redis.call('SET', KEYS[2], figures, 'PX', ARGV[7])
    else
        redis.call('PEXPIRE', KEYS[2], ARGV[7])
    end
    redis.call('SET', KEYS[3], '1', 'PX', cooldown)
    return 'open'
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('PTTL', KEYS[3]) > 0 then return 'open' end
    if ok then
        redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
        return 'closed'
    end
    return trip(nil)
end
local bucket_ms = tonumber(ARGV[2])
local buckets = tonumber(ARGV[3])
local bucket = math.floor(now / bucket_ms)
redis.call('HINCRBY', KEYS[1], 'c' .. bucket, 1)
if not ok then redis.call('HINCRBY', KEYS[1], 'f' .. bucket, 1) end
redis.call('PEXPIRE', KEYS[1], bucket_ms * (buckets + 1))
local oldest = bucket - buckets + 1
local calls, fails = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    local name = fields[i]
    if tonumber(string.sub(name, 2)) < oldest then
        redis.call('HDEL', KEYS[1], name)
    elseif string.sub(name, 1, 1) == 'c' then
        calls = calls + tonumber(fields[i + 1])
    else
        fails = fails + tonumber(fields[i + 1])
    end
end
if calls >= tonumber(ARGV[4]) and fails >= tonumber(ARGV[5]) * calls then
    return trip(calls .. ':' .. fails .. ':' .. now)
end
return 'closed'
"""

# KEYS: window, trip, open, probe. ARGV: bucket ms, buckets.
# Returns {state, calls, failures, ms until a call may go, what opened it (the trip key)}.
_STATUS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = math.floor(now / tonumber(ARGV[1])) - tonumber(ARGV[2]) + 1
local calls, fails = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    local name = fields[i]
    if tonumber(string.sub(name, 2)) >= oldest then
        if string.sub(name, 1, 1) == 'c' then calls = calls + tonumber(fields[i + 1])
        else fails = fails + tonumber(fields[i + 1]) end
    end
end
local figures = redis.call('GET', KEYS[2])
if not figures then return {'closed', calls, fails, 0, ''} end
local open = redis.call('PTTL', KEYS[3])
if open > 0 then return {'open', calls, fails, open, figures} end
local probe = redis.call('PTTL', KEYS[4])
if probe < 0 then probe = 0 end
return {'half_open', calls, fails, probe, figures}
"""

# A tripped breaker is forgotten (closed) after this long without news.
_TRIP_TTL_MS = 7 * 24 * 3600 * 1000
# How often a process re-registers a breaker in its tenant's set (which expires too).
_REGISTER_EVERY = 600.0
_REGISTRY_TTL = 7 * 24 * 3600


class RedisBreaker(CircuitBreaker):
    """Breakers in Redis, shared by every worker process.

    A breaker's keys share the hash tag ``{tenant/provider}`` so each script touches one
    Redis Cluster slot; a tenant's breakers are listed in the set ``...:{tenant}:known``.
    """

    def __init__(
        self, client: RedisClient, policy: BreakerPolicy, prefix: str = "clarion:cb"
    ) -> None:
        super().__init__(policy)
        self._client = client
        self._prefix = prefix
        self._allow = client.register_script(_ALLOW)
        self._record = client.register_script(_RECORD)
        self._status = client.register_script(_STATUS)
        self._registered: dict[BreakerKey, float] = {}

    def _keys(self, key: BreakerKey) -> list[str]:
        base = f"{self._prefix}:{{{key.tenant_id}/{key.provider}}}"
        return [f"{base}:w", f"{base}:trip", f"{base}:open", f"{base}:probe"]

    def _known(self, tenant_id: str) -> str:
        return f"{self._prefix}:{{{tenant_id}}}:known"

    async def allow(self, key: BreakerKey) -> bool:
        reply = await self._allow(keys=self._keys(key)[1:], args=[_ms(self.policy.probe_ttl)])
        return bool(int(reply))

    async def record(self, key: BreakerKey, ok: bool) -> None:
        p = self.policy
        args: list[Any] = [1 if ok else 0, _ms(p.bucket), p.buckets, p.min_calls, p.threshold]
        args += [_ms(p.cooldown), _TRIP_TTL_MS]
        await self._record(keys=self._keys(key), args=args)
        await self._register(key)

    async def _register(self, key: BreakerKey) -> None:
        now = time.monotonic()
        if self._registered.get(key, -math.inf) > now:
            return
        known = self._known(key.tenant_id)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.sadd(known, key.provider)
            pipe.expire(known, _REGISTRY_TTL)
            await pipe.execute()
        if len(self._registered) > 100_000:
            self._registered.clear()
        self._registered[key] = now + _REGISTER_EVERY

    async def status(self, key: BreakerKey) -> BreakerStatus:
        args = [_ms(self.policy.bucket), self.policy.buckets]
        reply = await self._status(keys=self._keys(key), args=args)
        state, calls, failures, wait_ms, figures = reply
        name = _text(state)
        if name == CLOSED:
            return _status(name, int(calls), int(failures), int(wait_ms) / 1000)
        opened_calls, opened_failures, opened_ms = _figures(_text(figures))
        opened_at = opened_ms / 1000 if opened_ms else None
        return _status(name, opened_calls, opened_failures, int(wait_ms) / 1000, opened_at)

    async def states(self, tenant_id: str) -> dict[str, BreakerStatus]:
        names = await self._client.smembers(self._known(tenant_id))
        found = {}
        for raw in sorted(names):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            found[name] = await self.status(BreakerKey(tenant_id, name))
        return found


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _figures(value: str) -> tuple[int, int, int]:
    """``calls:failures:opened at (ms)`` from a trip key; zeros for one written without."""
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return 0, 0, 0
    return int(parts[0]), int(parts[1]), int(parts[2])
