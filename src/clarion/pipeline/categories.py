"""Category policies for the planner, cached per tenant.

A change made through this process's API drops the tenant's entry at once; a change made
through another process is seen once the entry is older than ``ttl`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.durations import duration_seconds
from clarion.domain.preferences import CategoryPolicy
from clarion.store import categories as category_store

Policies = dict[str, CategoryPolicy]


def to_policy(row: Mapping[str, Any]) -> CategoryPolicy:
    channels = row.get("default_channels")
    digest = row.get("digest") or None
    return CategoryPolicy(
        name=row["name"],
        critical=bool(row.get("critical")),
        default_channels=tuple(channels) if channels is not None else None,
        max_per_hour=row.get("max_per_hour"),
        max_per_day=row.get("max_per_day"),
        overflow=row.get("overflow") or "drop",
        digest_window=duration_seconds(digest["window"]) if digest else None,
        digest_key=digest.get("key") if digest else None,
        during_snooze=row.get("during_snooze") or "defer",
    )


class CategoryCache:
    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Policies]] = {}

    def invalidate(self, tenant_id: str) -> None:
        self._entries.pop(tenant_id, None)

    async def load(self, engine: AsyncEngine, tenant_ids: Iterable[str]) -> dict[str, Policies]:
        """Every category of these tenants (built-ins included), one query for the stale."""
        now = time.monotonic()
        wanted = set(tenant_ids)
        found = {
            t: entry[1]
            for t in wanted
            if (entry := self._entries.get(t)) is not None and now - entry[0] < self._ttl
        }
        missing = wanted - found.keys()
        if missing:
            async with engine.connect() as conn:
                rows = await category_store.load_for(conn, missing)
            for tenant_id in missing:
                policies = {name: to_policy(row) for name, row in rows.get(tenant_id, {}).items()}
                self._entries[tenant_id] = (now, policies)
                found[tenant_id] = policies
        return found

    @staticmethod
    def policy(policies: Mapping[str, CategoryPolicy], name: str) -> CategoryPolicy:
        """A template's category; one deleted since the template was stored acts as a plain
        non-critical category."""
        return policies.get(name) or CategoryPolicy(name)
