"""Each tenant's configured providers, cached briefly in the process.

Loaded for many tenants in one query, kept for ``provider_cache_ttl`` seconds (so a change
made through another process is seen within seconds), and dropped at once by
:meth:`Catalog.invalidate` when this process changes them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clarion.providers.base import ProviderSpec
from clarion.providers.kinds import secret_fields
from clarion.security.secrets import MASK, Keyring, RedactedConfig, SecretError
from clarion.store import providers as store
from clarion.store.db import AsyncEngine
from clarion.store.tenant_cache import TenantCache

log = logging.getLogger(__name__)


def spec_of(row: store.ProviderRow, secrets: dict[str, Any] | None) -> ProviderSpec:
    """The stored provider's spec with ``secrets`` merged in; with None (they could not be
    opened) the secret fields are left out rather than passed on as ``"***"``."""
    secret = secret_fields(row.kind)
    values = {k: v for k, v in row.config.items() if not (k in secret and v == MASK)}
    values.update(secrets or {})
    return ProviderSpec(
        tenant_id=row.tenant_id,
        name=row.name,
        kind=row.kind,
        channel=row.channel,
        config=RedactedConfig(values, secret),
        priority=row.priority,
        rate_limit_per_second=row.rate_limit_per_second,
        enabled=row.enabled,
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """A configured provider. ``error`` says why its secrets could not be opened (then the
    spec lacks them and the provider cannot be built)."""

    spec: ProviderSpec
    error: str | None = None


@dataclass(slots=True)
class TenantProviders:
    by_name: dict[str, Entry] = field(default_factory=dict)
    # channel → its enabled providers, lowest priority number first, then by name
    chains: dict[str, list[ProviderSpec]] = field(default_factory=dict)
    # channels with at least one provider, enabled or not
    configured: set[str] = field(default_factory=set)

    def add(self, entry: Entry) -> None:
        self.by_name[entry.spec.name] = entry
        self.configured.add(entry.spec.channel)
        if entry.spec.enabled:
            self.chains.setdefault(entry.spec.channel, []).append(entry.spec)

    def sort(self) -> None:
        for specs in self.chains.values():
            specs.sort(key=lambda s: (s.priority, s.name))


class Catalog:
    def __init__(self, engine: AsyncEngine, keyring: Keyring, ttl: float) -> None:
        self._engine = engine
        self._keyring = keyring
        self._tenants: TenantCache[TenantProviders] = TenantCache(ttl, self._load)
        self._reported: set[tuple[str, str, str]] = set()

    def is_fresh(self, tenant_id: str) -> bool:
        return self._tenants.fresh(tenant_id)

    async def prepare(self, tenant_ids: Iterable[str]) -> list[str]:
        """Load the tenants whose copy is missing or stale; returns those reloaded."""
        return await self._tenants.prepare(tenant_ids)

    async def _load(self, tenant_ids: set[str]) -> dict[str, TenantProviders]:
        rows = await store.load_tenants(self._engine, tenant_ids)
        loaded = {t: TenantProviders() for t in tenant_ids}
        for row in rows:
            loaded[row.tenant_id].add(self._entry(row))
        for tenant in loaded.values():
            tenant.sort()
        return loaded

    def _entry(self, row: store.ProviderRow) -> Entry:
        try:
            return Entry(spec_of(row, row.open_secrets(self._keyring)))
        except SecretError as exc:
            key = (row.tenant_id, row.name, str(exc))
            if key not in self._reported:
                self._reported.add(key)
                log.error(
                    "provider %r of tenant %s: its credentials cannot be decrypted (%s); "
                    "is CLARION_SECRET_KEY or CLARION_PREVIOUS_SECRET_KEYS missing a key?",
                    row.name,
                    row.tenant_id,
                    exc,
                )
            return Entry(spec_of(row, None), error=str(exc))

    def invalidate(self, tenant_id: str) -> None:
        self._tenants.invalidate(tenant_id)

    def entry(self, tenant_id: str, name: str) -> Entry | None:
        cached = self._tenants.get(tenant_id)
        return cached.by_name.get(name) if cached else None

    def names(self, tenant_id: str) -> set[str]:
        cached = self._tenants.get(tenant_id)
        return set(cached.by_name) if cached else set()

    def configured(self, tenant_id: str, channel: str) -> bool:
        """Whether the tenant has any provider for the channel, enabled or not."""
        cached = self._tenants.get(tenant_id)
        return cached is not None and channel in cached.configured

    def chain(self, tenant_id: str, channel: str) -> list[ProviderSpec]:
        """The enabled providers of a channel in the order they are tried; [] when the
        tenant has none or is not loaded."""
        cached = self._tenants.get(tenant_id)
        return list(cached.chains.get(channel, ())) if cached else []
