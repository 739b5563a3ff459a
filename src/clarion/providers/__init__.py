"""Providers: the interface in ``base``, one module per kind, loaded lazily by name.

:class:`ProviderSet` is the process's one way to a provider. It knows each tenant's
configured providers (a short-lived cache, :mod:`clarion.providers.catalog`), picks the one
that carries a channel, and builds each once (secrets decrypted) and keeps it until its
configuration changes. Built-in providers need no configuration: ``webhook`` and ``inapp``
carry their channels, and ``CLARION_DEFAULT_PROVIDER`` (``sandbox``) carries every channel a
tenant has configured nothing for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from clarion.config import Settings
from clarion.errors import ProviderError, TransientError
from clarion.providers import kinds, registry
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.catalog import Catalog
from clarion.providers.webhook import SecretLookup
from clarion.realtime.base import Hub
from clarion.security.secrets import Keyring
from clarion.store.db import AsyncEngine
from clarion.store.pg import PgPool

__all__ = ["Provider", "ProviderSet", "ProviderSpec", "SendResult"]

log = logging.getLogger(__name__)

# A replaced provider may still be sending; it is closed this long after being replaced.
RETIRE_GRACE = 30.0


class ProviderSet:
    """The providers of one process, created on first use and closed together.

    ``prepare(tenants)`` loads tenants' configurations (one query, cached for
    ``provider_cache_ttl`` seconds); ``name_for`` and ``chain`` are synchronous and answer
    from what was prepared (an unprepared tenant gets the built-in or default provider).
    ``get``/``sender`` prepare the tenant themselves.
    """

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        secrets: SecretLookup,
        keyring: Keyring | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._secrets = secrets
        self._env = ProviderEnv(settings=settings, engine=engine)
        self._catalog = Catalog(engine, keyring or Keyring(None), settings.provider_cache_ttl)
        self._shared: dict[str, Provider] = {}
        # (tenant, channel) pairs already warned of going to the sandbox.
        self._sandboxed: set[tuple[str, str]] = set()
        # The spec of the built-in or default provider of a (tenant, channel) with none of
        # its own: made once, not per delivery.
        self._defaults: dict[tuple[str, str], ProviderSpec] = {}
        # Live inbox pushes for the in-app provider (set by the process's context).
        self.hub: Hub | None = None
        # The hot statements' asyncpg pool on PostgreSQL (set by the process's context).
        self.pg: PgPool | None = None
        self._instances: dict[tuple[str, str], tuple[ProviderSpec, Provider]] = {}
        self._fanouts: dict[str, tuple[tuple[int, ...], Provider]] = {}
        # Replaced providers waiting out their grace before being closed.
        self._retiring: dict[asyncio.Task[None], Provider] = {}
        self._build_lock = asyncio.Lock()

    # -- choosing -------------------------------------------------------------------------

    async def prepare(self, tenant_ids: Iterable[str]) -> None:
        """Load the provider settings of these tenants (those not cached or stale)."""
        reloaded = await self._catalog.prepare(tenant_ids)
        if reloaded:
            self._retire_removed(reloaded)

    def is_fresh(self, tenant_id: str) -> bool:
        """Whether a tenant's settings are loaded and not stale (``prepare`` has nothing to
        do for it)."""
        return self._catalog.is_fresh(tenant_id)

    def invalidate(self, tenant_id: str) -> None:
        """Forget a tenant's settings: the next use reloads them."""
        self._catalog.invalidate(tenant_id)

    def default_name(self, channel: str) -> str:
        """The provider of a channel that a tenant configured nothing for."""
        return kinds.BUILT_IN_BY_CHANNEL.get(channel, self._settings.default_provider)

    def name_for(self, tenant_id: str, channel: str) -> str:
        """The provider that carries a tenant's channel: its first enabled one by priority,
        else the built-in or default one. Answers from what ``prepare`` loaded."""
        specs = self._catalog.chain(tenant_id, channel)
        return specs[0].name if specs else self.default_name(channel)

    def has_destination(self, tenant_id: str, channel: str) -> bool:
        """Whether the provider that carries a tenant's channel (:meth:`name_for`) sends
        without an address of the recipient's: a chat provider with a destination of its
        own. Answers from what ``prepare`` loaded."""
        specs = self._catalog.chain(tenant_id, channel)
        return bool(specs) and kinds.KINDS[specs[0].kind].has_destination(specs[0].config)

    def chain(self, tenant_id: str, channel: str) -> list[ProviderSpec]:
        """A channel's enabled providers in the order to try them (failover); for a channel
        the tenant configured nothing for, the built-in or default provider alone (kind = its
        name, config {}). A channel whose providers are all disabled has none: its
        deliveries fail (``no_provider``) rather than going to the default."""
        specs = self._catalog.chain(tenant_id, channel)
        if specs or self._catalog.configured(tenant_id, channel):
            return specs
        key = (tenant_id, channel)
        default = self._defaults.get(key)
        if default is None:
            name = self.default_name(channel)
            if name == "sandbox" and key not in self._sandboxed:
                self._sandbox_warning(tenant_id, channel)
            default = ProviderSpec(
                tenant_id=tenant_id, name=name, kind=name, channel=channel, config={}
            )
            self._defaults[key] = default
        return [default]

    def _sandbox_warning(self, tenant_id: str, channel: str) -> None:
        """Once per tenant and channel in a process: on a production store, a channel that
        falls back to the sandbox reaches no one, and says so loudly."""
        self._sandboxed.add((tenant_id, channel))
        if not self._settings.is_sqlite:
            log.warning(
                "tenant %s has no %s provider: its %s deliveries go to the sandbox and reach "
                "no one (PUT /v1/providers/{name}, or CLARION_DEFAULT_PROVIDER)",
                tenant_id,
                channel,
                channel,
            )

    async def spec(self, tenant_id: str, name: str) -> ProviderSpec | None:
        """A tenant's configured provider by name (enabled or not); None for a built-in or
        unknown name."""
        await self.prepare((tenant_id,))
        entry = self._catalog.entry(tenant_id, name)
        return entry.spec if entry else None

    # -- building -------------------------------------------------------------------------

    async def get(self, tenant_id: str, name: str) -> Provider:
        """The provider named ``name`` for this tenant, started. A built-in name works for
        every tenant. ``KeyError`` for an unknown name; ``TransientError`` for a provider
        whose credentials cannot be decrypted or that fails to start."""
        await self.prepare((tenant_id,))
        entry = self._catalog.entry(tenant_id, name)
        if entry is None:
            if name in kinds.BUILT_IN:
                return await self._built_in(name)
            raise KeyError(f"no provider named {name!r}")
        if entry.spec.kind in kinds.BUILT_IN:
            return await self._built_in(entry.spec.kind)
        if entry.error is not None:
            raise TransientError(
                f"the credentials of provider {name!r} cannot be decrypted: {entry.error}",
                reason="secret_key_mismatch",
            )
        return await self._instance(entry.spec)

    def ready(self, tenant_id: str, channel: str, name: str) -> Provider | None:
        """What :meth:`sender` would return, when that needs no wait: the tenant's settings
        are fresh and the provider is built. None: ask :meth:`sender` (it loads, builds or
        raises). A channel worker's send takes this path for all but its first delivery
        of a provider in each ``provider_cache_ttl``."""
        if channel == "push" or not self._catalog.is_fresh(tenant_id):
            return None
        entry = self._catalog.entry(tenant_id, name)
        if entry is None:
            return self._shared.get(name) if name in kinds.BUILT_IN else None
        spec = entry.spec
        if spec.kind in kinds.BUILT_IN:
            return self._shared.get(spec.kind)
        current = self._instances.get((tenant_id, name))
        # ``_instance`` keeps the entry's own spec, so an unchanged one is the same object.
        if current is None or current[0] is not spec or entry.error is not None:
            return None
        return current[1]

    async def sender(self, tenant_id: str, channel: str, name: str) -> Provider:
        """What sends a delivery planned for provider ``name``: for push through an APNs or
        FCM provider, a fan-out to the tenant's first provider of each platform; otherwise
        ``get(tenant_id, name)``."""
        if channel == "push":
            fanout = await self._push(tenant_id, name)
            if fanout is not None:
                return fanout
        return await self.get(tenant_id, name)

    async def _push(self, tenant_id: str, name: str) -> Provider | None:
        await self.prepare((tenant_id,))
        named = self._catalog.entry(tenant_id, name)
        if named is None or named.spec.kind not in kinds.PUSH_PLATFORMS:
            return None
        chosen: dict[str, str] = {}
        for spec in self._catalog.chain(tenant_id, "push"):
            if spec.kind in kinds.PUSH_PLATFORMS:
                chosen.setdefault(spec.kind, spec.name)
        chosen.setdefault(named.spec.kind, name)
        by_platform = {kind: await self.get(tenant_id, n) for kind, n in sorted(chosen.items())}
        identity = tuple(id(p) for p in by_platform.values())
        cached = self._fanouts.get(tenant_id)
        if cached is not None and cached[0] == identity:
            return cached[1]
        from clarion.providers.push import PushFanout

        fanout = PushFanout(by_platform)
        self._fanouts[tenant_id] = (identity, fanout)
        return fanout

    async def _built_in(self, name: str) -> Provider:
        provider = self._shared.get(name)
        if provider is not None:
            return provider
        async with self._build_lock:
            provider = self._shared.get(name)
            if provider is None:
                provider = self._create_built_in(name)
                await provider.start()
                self._shared[name] = provider
        return provider

    def _create_built_in(self, name: str) -> Provider:
        if name == "sandbox":
            from clarion.providers.sandbox import SandboxProvider

            return SandboxProvider(self._engine)
        if name == "inapp":
            from clarion.providers.inapp import InAppProvider

            return InAppProvider(self._engine, self.hub, self.pg)
        if name == "webhook":
            from clarion.providers.webhook import WebhookProvider

            # Shared by every tenant: a connection for each of the channel's sends, so one
            # tenant holding its whole share of them never leaves another waiting for one.
            return WebhookProvider(
                self._secrets,
                allow_private=self._settings.allow_private_webhooks,
                timeout=self._settings.webhook_timeout,
                max_connections=self._settings.worker_concurrency,
                proxies=self._settings.proxies,
            )
        raise KeyError(f"no provider named {name!r}")

    async def _instance(self, spec: ProviderSpec) -> Provider:
        key = (spec.tenant_id, spec.name)
        current = self._instances.get(key)
        if current is not None and current[0] == spec:
            if current[0] is not spec:  # reloaded, unchanged: :meth:`ready` compares by identity
                self._instances[key] = (spec, current[1])
            return current[1]
        async with self._build_lock:
            current = self._instances.get(key)
            if current is not None and current[0] == spec:
                return current[1]
            provider = await self._build(spec)
            self._instances[key] = (spec, provider)
        if current is not None:
            self._retire(current[1])
        return provider

    async def _build(self, spec: ProviderSpec) -> Provider:
        factory = registry.load(spec.kind)
        try:
            provider = factory(spec, self._env)
            await provider.start()
        except ProviderError:
            raise
        except Exception as exc:
            # The exception's text may quote the configuration, credentials included.
            log.error(
                "provider %r (%s) of tenant %s could not be started: %s",
                spec.name,
                spec.kind,
                spec.tenant_id,
                type(exc).__name__,
            )
            raise TransientError(
                f"provider {spec.name!r} could not be started ({type(exc).__name__})",
                reason="provider_unavailable",
            ) from exc
        return provider

    # -- closing --------------------------------------------------------------------------

    def _retire_removed(self, tenant_ids: list[str]) -> None:
        """Retire the instances of providers that were deleted or became built-in."""
        reloaded = set(tenant_ids)
        for key in [k for k in self._instances if k[0] in reloaded]:
            entry = self._catalog.entry(*key)
            if entry is None or entry.spec.kind in kinds.BUILT_IN:
                _, provider = self._instances.pop(key)
                self._retire(provider)

    def _retire(self, provider: Provider) -> None:
        task = asyncio.create_task(self._close_later(provider), name="provider-retire")
        self._retiring[task] = provider
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    @staticmethod
    async def _close_later(provider: Provider) -> None:
        await asyncio.sleep(RETIRE_GRACE)
        await _close(provider)

    async def aclose(self) -> None:
        """Close every provider: the replaced ones at once, without their grace."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for task, provider in retiring.items():
            if task.cancelled():
                await _close(provider)
        for _, provider in self._instances.values():
            await _close(provider)
        for provider in self._shared.values():
            await _close(provider)
        self._instances.clear()
        self._shared.clear()
        self._fanouts.clear()


async def _close(provider: Provider) -> None:
    try:
        await provider.aclose()
    except Exception as exc:
        log.warning("closing provider %s failed: %s", provider.kind, type(exc).__name__)
