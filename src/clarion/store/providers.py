"""Tenants' providers. Secret fields of a config are sealed in their own column; the
``config`` column keeps the rest, with each secret that is set shown as ``"***"``.

The store knows nothing of provider kinds: which fields of a kind's config are secret is
the caller's to say (:mod:`clarion.providers.kinds`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.secrets import MASK, Keyring, SecretError, provider_aad
from clarion.store import audit, named
from clarion.store.db import as_utc
from clarion.store.tables import providers


class NewProvider(Protocol):
    """What :func:`put` stores of a provider (a :class:`clarion.providers.base.ProviderSpec`
    is one), its config validated and complete."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def priority(self) -> int: ...
    @property
    def rate_limit_per_second(self) -> float | None: ...
    @property
    def enabled(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProviderRow:
    tenant_id: str
    name: str
    channel: str
    kind: str
    config: dict[str, Any] = field(repr=False)
    secrets: str | None = field(repr=False)
    priority: int
    rate_limit_per_second: float | None
    enabled: bool
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """What the API shows: never a secret."""
        return {
            "name": self.name,
            "channel": self.channel,
            "kind": self.kind,
            "config": self.config,
            "priority": self.priority,
            "rate_limit_per_second": self.rate_limit_per_second,
            "enabled": self.enabled,
            "created_at": as_utc(self.created_at),
            "updated_at": as_utc(self.updated_at),
        }

    def audited(self) -> dict[str, Any]:
        """What the audit log compares: the public view, secrets masked."""
        return {k: v for k, v in self.public().items() if k not in ("created_at", "updated_at")}

    def open_secrets(self, keyring: Keyring) -> dict[str, Any]:
        """The secret fields, decrypted; ``SecretError`` if they cannot be."""
        if self.secrets is None:
            return {}
        value = keyring.open_json(self.secrets, provider_aad(self.tenant_id, self.name))
        if not isinstance(value, dict):
            raise SecretError("the sealed secrets are not an object")
        return value


NAMED = named.Named(providers, audit.Resource.PROVIDER, ProviderRow)
get = NAMED.get
list_page = NAMED.list_page
delete_one = NAMED.delete_one


def split_config(
    config: dict[str, Any], secret_fields: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what may be shown, with set secrets as ``"***"``; the secret values)."""
    shown: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for key, value in config.items():
        if key in secret_fields and value is not None:
            shown[key] = MASK
            secrets[key] = value
        else:
            shown[key] = value
    return shown, secrets


def _secrets_changed(
    keyring: Keyring, before: ProviderRow | None, secrets: dict[str, Any]
) -> list[str]:
    """The secret fields whose values differ from the stored ones (all that are set, when
    the stored ones cannot be opened)."""
    if before is None:
        return []
    try:
        old = before.open_secrets(keyring)
    except SecretError:
        return sorted(f"config.{f}" for f in secrets)
    changed = [f for f in old.keys() | secrets.keys() if old.get(f) != secrets.get(f)]
    return sorted(f"config.{f}" for f in changed)


async def put(
    engine: AsyncEngine,
    keyring: Keyring,
    spec: NewProvider,
    secret_fields: frozenset[str],
    *,
    actor: str = audit.SYSTEM,
) -> ProviderRow:
    """Create or replace a provider from a validated, complete ``spec``; the values of
    ``secret_fields`` are sealed."""
    shown, secrets = split_config(dict(spec.config), secret_fields)
    sealed = (
        keyring.seal_json(secrets, provider_aad(spec.tenant_id, spec.name)) if secrets else None
    )

    def secrets_changed(before: ProviderRow | None) -> list[str]:
        return _secrets_changed(keyring, before, secrets)

    given = {"config": shown, "secrets": sealed}
    return await NAMED.put(engine, spec, given, actor=actor, secrets_changed=secrets_changed)


async def load_tenants(engine: AsyncEngine, tenant_ids: Iterable[str]) -> list[ProviderRow]:
    """Every provider of these tenants."""
    return await NAMED.of_tenants(engine, tenant_ids)


async def rotate(
    engine: AsyncEngine, keyring: Keyring, batch_size: int = 200, *, actor: str = audit.SYSTEM
) -> named.Rotation:
    """Re-seal every provider's secrets with the current key (see :func:`named.rotate`)."""
    return await named.rotate(
        engine, keyring, NAMED, "secrets", provider_aad, batch_size=batch_size, actor=actor
    )
