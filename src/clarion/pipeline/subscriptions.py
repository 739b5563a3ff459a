"""Each tenant's enabled status webhooks, cached briefly in the process.

The workers ask, for every batch of status changes, whether the batch's tenants want
events at all; a tenant without webhooks costs a dictionary lookup. Loaded for many tenants
in one query, kept for ``provider_cache_ttl`` seconds (a change made through another process
is seen within seconds) and dropped at once by :meth:`Subscriptions.invalidate` when this
process changes them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from clarion.security.secrets import Keyring, SecretError
from clarion.store import webhooks as store
from clarion.store.db import AsyncEngine
from clarion.store.tenant_cache import TenantCache

log = logging.getLogger(__name__)

# Every event type a webhook may subscribe to; "*" subscribes to all of them.
EVENT_TYPES = (
    "delivery.sent",
    "delivery.delivered",
    "delivery.failed",
    "delivery.dead",
    "delivery.suppressed",
    "delivery.scheduled",
    # Email opens and clicks, of categories that track them (docs/tracking.md).
    "delivery.opened",
    "delivery.clicked",
)
ALL_EVENTS = "*"


@dataclass(frozen=True, slots=True)
class Subscription:
    """An enabled webhook, its secret opened."""

    tenant_id: str
    name: str
    url: str
    events: frozenset[str]
    secret: str = field(repr=False)

    def wants(self, event_type: str) -> bool:
        return ALL_EVENTS in self.events or event_type in self.events


@dataclass(frozen=True, slots=True)
class _Tenant:
    hooks: tuple[Subscription, ...] = ()
    # Every event type at least one of the hooks wants, "*" expanded.
    types: frozenset[str] = frozenset()


class Subscriptions:
    def __init__(self, engine: AsyncEngine, keyring: Keyring, ttl: float) -> None:
        self._engine = engine
        self._keyring = keyring
        self._tenants: TenantCache[_Tenant] = TenantCache(ttl, self._load)
        self._reported: set[tuple[str, str]] = set()

    async def prepare(self, tenant_ids: Iterable[str]) -> None:
        """Load the tenants whose copy is missing or stale."""
        await self._tenants.prepare(tenant_ids)

    async def _load(self, tenant_ids: set[str]) -> dict[str, _Tenant]:
        rows = await store.load_enabled(self._engine, tenant_ids)
        hooks: dict[str, list[Subscription]] = {t: [] for t in tenant_ids}
        for row in rows:
            hook = self._open(row)
            if hook is not None:
                hooks[row.tenant_id].append(hook)
        loaded = {}
        for tenant_id, found in hooks.items():
            types = frozenset(t for t in EVENT_TYPES if any(h.wants(t) for h in found))
            loaded[tenant_id] = _Tenant(tuple(found), types)
        return loaded

    def _open(self, row: store.WebhookRow) -> Subscription | None:
        try:
            secret = row.open_secret(self._keyring)
        except SecretError as exc:
            if (row.tenant_id, row.name) not in self._reported:
                self._reported.add((row.tenant_id, row.name))
                log.error(
                    "webhook %r of tenant %s: its secret cannot be decrypted (%s); no events "
                    "are sent to it",
                    row.name,
                    row.tenant_id,
                    exc,
                )
            return None
        return Subscription(row.tenant_id, row.name, row.url, frozenset(row.events), secret)

    def invalidate(self, tenant_id: str) -> None:
        self._tenants.invalidate(tenant_id)

    def wants(self, tenant_id: str, event_type: str) -> bool:
        """Whether any enabled webhook of the tenant takes this event (as last loaded)."""
        cached = self._tenants.get(tenant_id)
        return cached is not None and event_type in cached.types

    def matching(self, tenant_id: str, event_type: str) -> list[Subscription]:
        cached = self._tenants.get(tenant_id)
        return [h for h in cached.hooks if h.wants(event_type)] if cached else []
