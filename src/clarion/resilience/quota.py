"""Intake quotas: how many notifications a tenant may submit per second, whichever way
they come in (the API, or the runs of its recurring schedules).

Each tenant has a GCRA bucket (``intake_rate_per_second`` sustained, ``intake_burst`` at
once), from the deployment settings or the tenant's own ``settings`` JSON, kept in the
rate limiter under ``intake:<tenant id>`` (in Redis when there is one, so every process
charges the same bucket). A notification costs 1, whatever its audience.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from clarion.config import Settings
from clarion.resilience.ratelimit import Take
from clarion.store import tenants as tenant_store
from clarion.store.db import AsyncEngine

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
