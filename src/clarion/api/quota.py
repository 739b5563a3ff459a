"""Intake quotas: how many notifications a tenant may submit per second.

Each tenant has a GCRA bucket (``intake_rate_per_second`` sustained, ``intake_burst`` at
once), from the deployment settings or the tenant's own ``settings`` JSON. A request costs
the number of notifications it carries; a request over quota is refused whole with a 429
``rate_limited``. Every answer carries the ``RateLimit-*`` header fields (IETF draft
"RateLimit header fields for HTTP"); a refusal also ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from clarion.config import Settings
from clarion.errors import TooManyRequests
from clarion.resilience.ratelimit import Decision, RateLimiter, Take
from clarion.store.tables import tenants

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Response)
_CACHE_TTL = 10.0
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Charged:
    """An allowed request's ``RateLimit-*`` headers, to set on its response."""

    headers: dict[str, str]

    def apply(self, response: R) -> R:
        response.headers.update(self.headers)
        return response


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


def headers_for(quota: Quota, decision: Decision) -> dict[str, str]:
    window = max(1, math.ceil(quota.burst / quota.rate))
    return {
        "RateLimit-Limit": str(quota.burst),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(max(0, math.ceil(decision.reset))),
        "RateLimit-Policy": f"{quota.burst};w={window}",
    }


class IntakeQuota:
    """The intake limiter of one API process; tenants' quota settings are cached briefly."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        limiter: RateLimiter,
        take: Callable[[Take], Awaitable[Decision]] | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        # The intake's batched charging when there is one, else one call per request.
        self._take = take or self._take_alone
        self._limiter = limiter
        self._cache: dict[str, tuple[float, Quota]] = {}

    async def quota(self, tenant_id: str) -> Quota:
        now = time.monotonic()
        hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._engine.connect() as conn:
            query = select(tenants.c.settings).where(tenants.c.id == tenant_id)
            overrides = (await conn.execute(query)).scalar()
        quota = quota_of(self._settings, overrides if isinstance(overrides, dict) else None)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[tenant_id] = (now + _CACHE_TTL, quota)
        return quota

    async def _take_alone(self, take: Take) -> Decision:
        [decision] = await self._limiter.take_many([take])
        return decision

    async def charge(self, tenant_id: str, cost: int) -> Charged:
        """Take ``cost`` notifications from the tenant's quota, or raise a 429."""
        quota = await self.quota(tenant_id)
        decision = await self._take(
            Take(f"intake:{tenant_id}", quota.rate, quota.burst, max(1, cost))
        )
        headers = headers_for(quota, decision)
        if decision.allowed:
            return Charged(headers)
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
        if cost > quota.burst:
            message = (
                f"this request holds {cost} notifications; the quota allows at most "
                f"{quota.burst} at once: send smaller batches"
            )
        else:
            message = (
                f"over the intake quota of {quota.rate:g} notifications per second "
                f"(burst {quota.burst}); retry after {headers['Retry-After']} s"
            )
        raise TooManyRequests(message, headers=headers)


async def charge_intake(request: Request, tenant_id: str, cost: int) -> Charged:
    """Charge a request that submits ``cost`` notifications to its tenant's quota."""
    return await charge_intake_of(request.app.state, tenant_id, cost)


async def charge_intake_of(state: Any, tenant_id: str, cost: int) -> Charged:
    """:func:`charge_intake` given the application's ``state``."""
    quota: IntakeQuota | None = getattr(state, "quota", None)
    if quota is None:
        ctx = state.ctx
        intake = state.intake
        quota = state.quota = IntakeQuota(
            ctx.settings,
            ctx.engine,
            ctx.resilience.limiter,
            intake.charge if intake is not None else None,
        )
    return await quota.charge(tenant_id, cost)
