"""Providers: the interface in ``base``, one module per kind, loaded lazily by name."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.config import Settings
from clarion.domain.models import Channel
from clarion.providers.base import OutboundMessage, Provider, SendResult
from clarion.providers.webhook import SecretLookup

__all__ = ["OutboundMessage", "Provider", "ProviderSet", "SendResult"]

# Channels whose delivery needs no configured provider.
BUILT_IN = {Channel.WEBHOOK: "webhook", Channel.INAPP: "inapp"}


class ProviderSet:
    """The providers of one process, created on first use and closed together."""

    def __init__(self, settings: Settings, engine: AsyncEngine, secrets: SecretLookup) -> None:
        self._settings = settings
        self._engine = engine
        self._secrets = secrets
        self._instances: dict[str, Provider] = {}

    def name_for(self, tenant_id: str, channel: str) -> str:
        """Which provider carries a tenant's channel."""
        return BUILT_IN.get(Channel(channel), self._settings.default_provider)

    async def get(self, name: str) -> Provider:
        provider = self._instances.get(name)
        if provider is None:
            provider = self._create(name)
            await provider.start()
            self._instances[name] = provider
        return provider

    def _create(self, name: str) -> Provider:
        if name == "sandbox":
            from clarion.providers.sandbox import SandboxProvider

            return SandboxProvider(self._engine)
        if name == "inapp":
            from clarion.providers.inapp import InAppProvider

            return InAppProvider(self._engine)
        if name == "webhook":
            from clarion.providers.webhook import WebhookProvider

            return WebhookProvider(
                self._secrets,
                allow_private=self._settings.allow_private_webhooks,
                timeout=self._settings.webhook_timeout,
            )
        raise KeyError(f"no provider named {name!r}")

    async def aclose(self) -> None:
        for provider in self._instances.values():
            await provider.aclose()
        self._instances.clear()
