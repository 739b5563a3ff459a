"""Intake quotas: how many notifications a tenant may submit per second, whichever way
they come in (the API, or the runs of its recurring schedules).

Each tenant has a GCRA bucket (``intake_rate_per_second`` sustained, ``intake_burst`` at
once), from the deployment settings or the tenant's own ``settings`` JSON, kept in the
rate limiter under ``intake:<tenant id>`` (in Redis when there is one, so every process
charges the same bucket). A notification costs 1, whatever its audience.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from clarion.config import Settings
from clarion.resilience.ratelimit import Decision, Take
from clarion.store import tenants as tenant_store
from clarion.store.db import AsyncEngine

log = logging.getLogger(__name__)

_CACHE_TTL = 10.0
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    burst: int

    def take(self, tenant_id: str, cost: int) -> Take:
        """The request for ``cost`` notifications of the tenant's bucket."""
        return Take(f"intake:{tenant_id}", self.rate, self.burst, max(1, cost))

    def describe(self) -> str:
        return f"{self.rate:g} notifications per second (burst {self.burst})"


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 and math.isfinite(value) else None


def quota_of(settings: Settings, overrides: dict[str, Any] | None) -> Quota:
    """The tenant's quota: its own settings where valid, else the deployment's."""
    overrides = overrides or {}
    rate = _positive(overrides.get("intake_rate_per_second")) or settings.intake_rate_per_second
    burst = _positive(overrides.get("intake_burst"))
    return Quota(rate, max(1, int(burst)) if burst else settings.intake_burst)


class TenantQuotas:
    """Tenants' quotas, read from the store and cached briefly (a change of a tenant's
    quota applies within :data:`_CACHE_TTL` seconds)."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._settings = settings
        self._engine = engine
        self._cache: dict[str, tuple[float, Quota]] = {}

    async def quota(self, tenant_id: str) -> Quota:
        now = time.monotonic()
        hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        overrides = await tenant_store.settings_of(self._engine, tenant_id)
        quota = quota_of(self._settings, overrides)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[tenant_id] = (now + _CACHE_TTL, quota)
        return quota


# An allowance taken ahead is spent within this many seconds of its last charge, or its
# rest is forgotten.
ALLOWANCE_HOLD = 0.25
# At most this many notifications are taken ahead at once, and at most this share of what
# the bucket had left at the last look: near its limit a tenant is charged one by one.
ALLOWANCE_MOST = 64
ALLOWANCE_SHARE = 8


@dataclass(slots=True)
class _Allowance:
    rate: float
    burst: int
    tokens: int  # taken from the shared bucket, not yet spent
    until: float  # when the rest is forgotten (``time.monotonic()``)
    remaining: int  # what the shared bucket had left after the take
    reset: float  # seconds from ``taken`` until the bucket is whole again
    taken: float


Charger = Callable[[Take], Awaitable[Decision]]


class Allowances:
    """One process's intake charges, most of them without a round trip to the shared
    bucket.

    A tenant that sends steadily through this process takes a few notifications ahead
    with a charge that goes to the bucket, and spends them on its next requests for up to
    :data:`ALLOWANCE_HOLD` seconds. How many it takes ahead adapts to its pace: doubled
    when an allowance ran out before its time (up to :data:`ALLOWANCE_MOST`), halved when
    some of it was left over and forgotten. Once half of it is spent within its time, a
    charge for the rest is sent in the background (a *top-up*) while the requests go on
    spending what is held, so that a steady tenant's requests do not wait for the bucket
    at all, nor are charged one by one while a charge is on its way. Never more than
    1/:data:`ALLOWANCE_SHARE` of what the bucket had left, so near its quota a tenant is
    charged one request at a time, exactly as without allowances; and one charge at a
    time per tenant takes ahead (others that miss meanwhile wait for it, and are charged
    alone only if it did not bring enough), so a process never holds more than
    :data:`ALLOWANCE_MOST` of a tenant's.

    Whatever is spent here was allowed by the bucket first, so a tenant never gets more
    than its quota; an allowance left over (a tenant that stopped) is capacity the tenant
    does not get back. A refusal always comes from the bucket: a charge too big for what
    is held goes there, and if the bucket refuses it with the notifications ahead, it is
    asked again for the charge alone.
    """

    def __init__(self, charge: Charger, clock: Callable[[], float] = time.monotonic) -> None:
        self._charge = charge
        self._clock = clock
        self._held: dict[str, _Allowance] = {}
        self._ahead: dict[str, int] = {}  # how many to take ahead next time, per bucket
        # Buckets with a charge taking ahead under way: set once it has come back.
        self._asking: dict[str, asyncio.Event] = {}
        self._topping: set[asyncio.Task[None]] = set()

    async def take(self, take: Take) -> Decision:
        key = take.key
        spent = self._spend(key, take)
        if spent is not None:
            return spent
        asking = self._asking.get(key)
        if asking is not None:
            # A charge taking ahead is on its way: what it brings may cover this one too.
            await asking.wait()
            spent = self._spend(key, take)
            if spent is not None:
                return spent
        now = self._clock()
        held = self._valid(key, take)
        ahead = 0
        if held is not None and key not in self._asking:
            pace = self._ahead.get(key, 0)
            if held.until > now:  # spent before its time: take more ahead
                pace = min(ALLOWANCE_MOST, max(1, pace * 2))
            elif held.tokens > 0:  # some was forgotten: take less
                pace //= 2
            self._ahead[key] = pace
            ahead = min(pace, held.remaining // ALLOWANCE_SHARE)
        mine: asyncio.Event | None = None
        if ahead:
            mine = self._asking[key] = asyncio.Event()
        try:
            decision = await self._charge(replace(take, cost=take.cost + ahead))
            if not decision.allowed and ahead:
                ahead = 0
                decision = await self._charge(take)
        finally:
            if mine is not None:
                # Those waiting for it are woken after the allowance is kept below (no
                # await in between).
                del self._asking[key]
                mine.set()
        if not decision.allowed:
            return decision
        holding = self._keep(key, take, ahead, decision)
        remaining = min(take.burst, decision.remaining + holding)
        return Decision(True, decision.retry_after, remaining, decision.reset)

    def _keep(self, key: str, take: Take, ahead: int, decision: Decision) -> int:
        """Hold what a charge allowed ahead, beside what another charge of the tenant that
        came back meanwhile brought; what is held now."""
        now = self._clock()
        current = self._valid(key, take)
        held = ahead + (current.tokens if current is not None and current.until > now else 0)
        self._held[key] = _Allowance(
            take.rate,
            take.burst,
            held,
            now + ALLOWANCE_HOLD,
            decision.remaining,
            decision.reset,
            now,
        )
        if len(self._held) > _CACHE_MAX:
            self._forget(now)
        return held

    def _spend(self, key: str, take: Take) -> Decision | None:
        """The charge taken from what this process holds for the tenant, or None if that
        is not enough."""
        now = self._clock()
        held = self._valid(key, take)
        if held is None or held.until <= now or held.tokens < take.cost:
            return None
        held.tokens -= take.cost
        if held.tokens * 2 <= self._ahead.get(key, 0) and key not in self._asking:
            self._top_up(key, take, held)
        return self._decision(held, now)

    def _top_up(self, key: str, take: Take, held: _Allowance) -> None:
        """Half of what was taken ahead is spent, within its time: take more ahead (up to
        twice as many as last time) in the background."""
        pace = min(ALLOWANCE_MOST, max(1, self._ahead.get(key, 0) * 2))
        self._ahead[key] = pace
        amount = min(pace - held.tokens, held.remaining // ALLOWANCE_SHARE)
        if amount <= 0:
            return
        asking = self._asking[key] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._topping_up(key, take, amount, asking))
        self._topping.add(task)
        task.add_done_callback(self._topping.discard)

    async def _topping_up(self, key: str, take: Take, amount: int, asking: asyncio.Event) -> None:
        try:
            decision = await self._charge(replace(take, cost=amount))
        except Exception as exc:  # the bucket out of reach: the next charge that misses says so
            log.debug("an intake allowance could not be topped up: %r", exc)
            return
        finally:
            del self._asking[key]
            asking.set()
        if decision.allowed:
            self._keep(key, take, amount, decision)
            return
        # What the bucket has left is too little to take ahead: no more top-ups until a
        # charge finds more.
        current = self._valid(key, take)
        if current is not None:
            current.remaining = decision.remaining

    def _valid(self, key: str, take: Take) -> _Allowance | None:
        """The allowance held for ``key``, unless the tenant's quota changed since."""
        held = self._held.get(key)
        if held is None or (held.rate, held.burst) != (take.rate, take.burst):
            return None
        return held

    @staticmethod
    def _decision(held: _Allowance, now: float) -> Decision:
        """What the bucket would say: what it had left and what is still held here."""
        remaining = min(held.burst, held.remaining + held.tokens)
        return Decision(True, 0.0, remaining, max(0.0, held.reset - (now - held.taken)))

    def _forget(self, now: float) -> None:
        for key in [key for key, held in self._held.items() if held.until <= now]:
            del self._held[key]
            self._ahead.pop(key, None)
