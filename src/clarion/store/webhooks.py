"""Tenants' status webhooks. The signing secret is sealed in its own column and never shown
after the response that created it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.secrets import MASK, Keyring, associated_data
from clarion.store import audit, named
from clarion.store.db import as_utc
from clarion.store.tables import webhooks


def webhook_aad(tenant_id: str, name: str) -> bytes:
    """Binds a sealed secret to its webhook: copied to another row, it does not open."""
    return associated_data("webhook", tenant_id, name)


@dataclass(frozen=True, slots=True)
class WebhookRow:
    tenant_id: str
    name: str
    url: str
    events: list[str]
    secret: str = field(repr=False)  # sealed
    enabled: bool
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def public(self, secret: str = MASK) -> dict[str, Any]:
        """What the API shows; the secret only when it was just made."""
        return {
            "name": self.name,
            "url": self.url,
            "events": self.events,
            "secret": secret,
            "enabled": self.enabled,
            "created_at": as_utc(self.created_at),
            "updated_at": as_utc(self.updated_at),
        }

    def audited(self) -> dict[str, Any]:
        """What the audit log compares: the public view, the secret masked."""
        return {k: v for k, v in self.public().items() if k not in ("created_at", "updated_at")}

    def open_secret(self, keyring: Keyring) -> str:
        """The signing secret; ``SecretError`` if it cannot be decrypted."""
        return keyring.decrypt(self.secret, webhook_aad(self.tenant_id, self.name)).decode()


NAMED = named.Named(webhooks, audit.Resource.WEBHOOK, WebhookRow)
get = NAMED.get
list_page = NAMED.list_page
delete_one = NAMED.delete_one


@dataclass(frozen=True, slots=True)
class WebhookIn:
    """A validated webhook to store. ``secret`` None keeps the stored one (``sealed``)."""

    tenant_id: str
    name: str
    url: str
    events: list[str]
    enabled: bool
    secret: str | None = field(default=None, repr=False)
    sealed: str | None = field(default=None, repr=False)


async def put(
    engine: AsyncEngine, keyring: Keyring, hook: WebhookIn, *, actor: str = audit.SYSTEM
) -> WebhookRow:
    """Create or replace a webhook. With a new ``secret`` it is sealed and stored; without,
    the stored one (``hook.sealed``) is kept."""
    keep: tuple[str, ...] = ()
    if hook.secret is not None:
        sealed = keyring.encrypt(hook.secret.encode(), webhook_aad(hook.tenant_id, hook.name))
    elif hook.sealed is not None:
        sealed, keep = hook.sealed, ("secret",)
    else:
        raise ValueError("a webhook needs a secret")

    def secrets_changed(before: WebhookRow | None) -> list[str]:
        # A secret sent (or made) replaces the stored one: recorded as changed, never shown.
        return ["secret"] if before is not None and hook.secret is not None else []

    return await NAMED.put(
        engine, hook, {"secret": sealed}, keep=keep, actor=actor, secrets_changed=secrets_changed
    )


async def load_enabled(engine: AsyncEngine, tenant_ids: Iterable[str]) -> list[WebhookRow]:
    """The enabled webhooks of these tenants."""
    return await NAMED.of_tenants(engine, tenant_ids, webhooks.c.enabled)


async def rotate(
    engine: AsyncEngine, keyring: Keyring, batch_size: int = 200, *, actor: str = audit.SYSTEM
) -> named.Rotation:
    """Re-seal every webhook's secret with the current key (see :func:`named.rotate`)."""
    return await named.rotate(
        engine, keyring, NAMED, "secret", webhook_aad, batch_size=batch_size, actor=actor
    )
