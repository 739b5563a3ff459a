"""Each tenant's copy of some of its configuration, read again once it is ``ttl`` seconds
old or after :meth:`TenantCache.invalidate`: the providers' catalog and the status
webhooks' subscriptions keep theirs this way.

A copy is stamped with the time its load began, so an invalidation made while the load ran
wins. One load runs at a time; tenants made fresh by a load that ran meanwhile are not
loaded again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class TenantCache(Generic[T]):
    def __init__(self, ttl: float, load: Callable[[set[str]], Awaitable[dict[str, T]]]) -> None:
        """``load`` reads the copies of a set of tenants (one for each of them)."""
        self._ttl = ttl
        self._load = load
        self._copies: dict[str, tuple[float, T]] = {}
        self._invalidated: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def fresh(self, tenant_id: str, now: float | None = None) -> bool:
        cached = self._copies.get(tenant_id)
        if cached is None:
            return False
        loaded_at = cached[0]
        if loaded_at + self._ttl <= (time.monotonic() if now is None else now):
            return False
        return loaded_at > self._invalidated.get(tenant_id, -math.inf)

    def get(self, tenant_id: str) -> T | None:
        """The tenant's copy as last loaded, fresh or not; None if it never was."""
        cached = self._copies.get(tenant_id)
        return cached[1] if cached is not None else None

    async def prepare(self, tenant_ids: Iterable[str]) -> list[str]:
        """Load the tenants whose copy is missing or stale; returns those loaded."""
        stale = {t for t in tenant_ids if not self.fresh(t)}
        if not stale:
            return []
        async with self._lock:
            started = time.monotonic()
            stale = {t for t in stale if not self.fresh(t, started)}
            if stale:
                loaded = await self._load(stale)
                self._copies.update((t, (started, loaded[t])) for t in stale)
        return sorted(stale)

    def invalidate(self, tenant_id: str) -> None:
        self._invalidated[tenant_id] = time.monotonic()
