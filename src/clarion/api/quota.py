"""Intake quotas over HTTP: how many notifications a tenant may submit per second.

Each tenant has a GCRA bucket (:mod:`clarion.resilience.quota`, shared with the runs of its
recurring schedules). A request costs the number of notifications it carries; a request
over quota is refused whole with a 429 ``rate_limited``. Every answer carries the
``RateLimit-*`` header fields (IETF draft "RateLimit header fields for HTTP"); a refusal
also ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response

from clarion.config import Settings
from clarion.errors import TooManyRequests
from clarion.resilience.quota import Quota, TenantQuotas, quota_of
from clarion.resilience.ratelimit import Decision, RateLimiter, Take
from clarion.store.db import AsyncEngine

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Response)
__all__ = ["Charged", "IntakeQuota", "Quota", "charge_intake", "charge_intake_of", "quota_of"]


@dataclass(frozen=True, slots=True)
class Charged:
    """An allowed request's ``RateLimit-*`` headers, to set on its response."""

    headers: dict[str, str]

    def apply(self, response: R) -> R:
        response.headers.update(self.headers)
        return response


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
        # The intake's batched charging when there is one, else one call per request.
        self._take = take or self._take_alone
        self._limiter = limiter
        self._quotas = TenantQuotas(settings, engine)

    async def quota(self, tenant_id: str) -> Quota:
        return await self._quotas.quota(tenant_id)

    async def _take_alone(self, take: Take) -> Decision:
        [decision] = await self._limiter.take_many([take])
        return decision

    async def charge(self, tenant_id: str, cost: int) -> Charged:
        """Take ``cost`` notifications from the tenant's quota, or raise a 429."""
        quota = await self.quota(tenant_id)
        decision = await self._take(quota.take(tenant_id, cost))
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
                f"over the intake quota of {quota.describe()}; retry after "
                f"{headers['Retry-After']} s"
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
