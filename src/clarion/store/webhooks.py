"""Tenants' status webhooks. The signing secret is sealed in its own column and never shown
after the response that created it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.secrets import MASK, Keyring, SecretError, associated_data
from clarion.store import audit, named
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.providers import Rotation
from clarion.store.sql import chunks, upsert
from clarion.store.tables import webhooks

_UPDATED = ["url", "events", "enabled", "updated_at"]


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

    @classmethod
    def from_mapping(cls, row: RowMapping) -> WebhookRow:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

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
    if hook.secret is not None:
        sealed = keyring.encrypt(hook.secret.encode(), webhook_aad(hook.tenant_id, hook.name))
        updated = [*_UPDATED, "secret"]
    elif hook.sealed is not None:
        sealed, updated = hook.sealed, _UPDATED
    else:
        raise ValueError("a webhook needs a secret")
    now = utcnow()
    values = {
        "tenant_id": hook.tenant_id,
        "name": hook.name,
        "url": hook.url,
        "events": hook.events,
        "secret": sealed,
        "enabled": hook.enabled,
        "created_at": now,
        "updated_at": now,
    }
    mine = (webhooks.c.tenant_id == hook.tenant_id) & (webhooks.c.name == hook.name)
    async with write_tx(engine) as conn:
        old = (
            (await conn.execute(select(webhooks).where(mine).with_for_update())).mappings().first()
        )
        before = WebhookRow.from_mapping(old) if old else None
        await conn.execute(upsert(conn, webhooks, ["tenant_id", "name"], updated).values(**values))
        found = WebhookRow.from_mapping(
            (await conn.execute(select(webhooks).where(mine))).mappings().one()
        )
        # A secret sent (or made) replaces the stored one: recorded as changed, never shown.
        replaced = ["secret"] if before is not None and hook.secret is not None else []
        change = audit.diff(
            before.audited() if before else None, found.audited(), secrets_changed=replaced
        )
        action = audit.Action.UPDATE if before else audit.Action.CREATE
        await audit.record(
            conn,
            audit.Change(hook.tenant_id, actor, audit.Resource.WEBHOOK, hook.name, action, change),
        )
    return found


async def get(engine: AsyncEngine, tenant_id: str, name: str) -> WebhookRow | None:
    row = await named.get_one(engine, webhooks, tenant_id, name)
    return WebhookRow.from_mapping(row) if row else None


async def list_page(
    engine: AsyncEngine, tenant_id: str, *, after: str | None, limit: int
) -> list[WebhookRow]:
    """Webhooks of a tenant by name, those after ``after``."""
    rows = await named.list_page(engine, webhooks, tenant_id, after=after, limit=limit)
    return [WebhookRow.from_mapping(r) for r in rows]


async def delete_one(
    engine: AsyncEngine, tenant_id: str, name: str, *, actor: str = audit.SYSTEM
) -> bool:
    def change(row: RowMapping) -> audit.Change:
        before = WebhookRow.from_mapping(row).audited()
        return audit.Change(
            tenant_id,
            actor,
            audit.Resource.WEBHOOK,
            name,
            audit.Action.DELETE,
            audit.diff(before, None),
        )

    return await named.delete_one(engine, webhooks, tenant_id, name, change)


async def load_enabled(engine: AsyncEngine, tenant_ids: Iterable[str]) -> list[WebhookRow]:
    """The enabled webhooks of these tenants (one query per thousand tenants)."""
    found: list[WebhookRow] = []
    async with engine.connect() as conn:
        for part in chunks(sorted(set(tenant_ids)), 1000):
            query = select(webhooks).where(webhooks.c.tenant_id.in_(part), webhooks.c.enabled)
            rows = (await conn.execute(query)).mappings().all()
            found.extend(WebhookRow.from_mapping(r) for r in rows)
    return found


async def rotate(
    engine: AsyncEngine, keyring: Keyring, batch_size: int = 200, *, actor: str = audit.SYSTEM
) -> Rotation:
    """Re-seal every webhook's secret with the current key, a batch per transaction, as
    :func:`clarion.store.providers.rotate` does for providers' credentials."""
    outcome = Rotation()
    after: tuple[str, str] = ("", "")
    while True:
        async with write_tx(engine) as conn:
            query = (
                select(webhooks.c.tenant_id, webhooks.c.name, webhooks.c.secret)
                .where(tuple_(webhooks.c.tenant_id, webhooks.c.name) > after)
                .order_by(webhooks.c.tenant_id, webhooks.c.name)
                .limit(batch_size)
            )
            rows = (await conn.execute(query)).all()
            for tenant_id, name, sealed in rows:
                if keyring.is_current(sealed):
                    continue
                aad = webhook_aad(tenant_id, name)
                try:
                    plain = keyring.decrypt(sealed, aad)
                except SecretError:
                    outcome.unreadable.append((tenant_id, name))
                    continue
                result = await conn.execute(
                    update(webhooks)
                    .where(
                        webhooks.c.tenant_id == tenant_id,
                        webhooks.c.name == name,
                        webhooks.c.secret == sealed,
                    )
                    .values(secret=keyring.encrypt(plain, aad))
                )
                outcome.changed += result.rowcount
                if result.rowcount:
                    await audit.record(conn, _reencrypted(tenant_id, name, actor))
        if len(rows) < batch_size:
            return outcome
        after = (rows[-1][0], rows[-1][1])


def _reencrypted(tenant_id: str, name: str, actor: str) -> audit.Change:
    change = {"secret": {"from": MASK, "to": MASK}}
    return audit.Change(
        tenant_id, actor, audit.Resource.WEBHOOK, name, audit.Action.REENCRYPT, change
    )
