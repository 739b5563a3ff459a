"""Category policies for the planner, cached per tenant and version.

Every category write moves its tenant's version in the store, in the write's transaction
(store/categories.py). The planner reads the versions of a batch's tenants with the batch
(folded into its first read on PostgreSQL) and the cache reloads a tenant whose version
has moved: a change applies to everything accepted after the write has been answered,
whichever process plans it; the categories of an unchanged tenant are not read again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clarion.domain.durations import duration_seconds
from clarion.domain.preferences import CategoryPolicy
from clarion.store import categories as category_store
from clarion.store.db import AsyncEngine

Policies = dict[str, CategoryPolicy]


def to_policy(row: Mapping[str, Any]) -> CategoryPolicy:
    channels = row.get("default_channels")
    digest = row.get("digest") or None
    tracking = row.get("tracking") or {}
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
        track_opens=bool(tracking.get("opens")),
        track_clicks=bool(tracking.get("clicks")),
    )


class CategoryCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, Policies]] = {}

    def invalidate(self, tenant_id: str) -> None:
        self._entries.pop(tenant_id, None)

    async def load(self, engine: AsyncEngine, versions: Mapping[str, int]) -> dict[str, Policies]:
        """Every category of these tenants (built-ins included), given each one's version as
        read with the batch; one query for those whose cached entry has another version.

        The categories are read after the versions, so an entry is never older than its
        version (a write in between is reloaded once more, next time)."""
        found: dict[str, Policies] = {}
        missing = []
        for tenant_id, version in versions.items():
            entry = self._entries.get(tenant_id)
            if entry is not None and entry[0] == version:
                found[tenant_id] = entry[1]
            else:
                missing.append(tenant_id)
        if missing:
            rows = await category_store.load_for(engine, missing)
            for tenant_id in missing:
                policies = {name: to_policy(row) for name, row in rows.get(tenant_id, {}).items()}
                self._entries[tenant_id] = (versions[tenant_id], policies)
                found[tenant_id] = policies
        return found

    @staticmethod
    def policy(policies: Mapping[str, CategoryPolicy], name: str) -> CategoryPolicy:
        """A template's category; one deleted since the template was stored acts as a plain
        non-critical category."""
        return policies.get(name) or CategoryPolicy(name)
