"""Tenants and their API keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.ids import new_id
from clarion.security.keys import generate_key, generate_webhook_secret, hash_key
from clarion.security.secrets import MASK
from clarion.store import audit
from clarion.store.db import utcnow, write_tx
from clarion.store.tables import api_keys, tenants


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    webhook_secret: str


@dataclass(frozen=True, slots=True)
class KeyGrant:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]


async def create_tenant(engine: AsyncEngine, name: str, *, actor: str = audit.SYSTEM) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name, webhook_secret=generate_webhook_secret())
    created = {"webhook_secret": {"to": MASK}}
    async with write_tx(engine) as conn:
        await conn.execute(
            tenants.insert().values(
                id=tenant.id,
                name=name,
                webhook_secret=tenant.webhook_secret,
                settings={},
                created_at=utcnow(),
            )
        )
        await audit.record(
            conn,
            audit.Change(
                tenant.id, actor, audit.Resource.TENANT, name, audit.Action.CREATE, created
            ),
        )
    return tenant


async def get_tenant_by_name(engine: AsyncEngine, name: str) -> Tenant | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.name == name))).first()
    return Tenant(row.id, row.name, row.webhook_secret) if row else None


async def get_tenant(engine: AsyncEngine, tenant_id: str) -> Tenant | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    return Tenant(row.id, row.name, row.webhook_secret) if row else None


async def count_tenants(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(tenants.c.id).limit(1))).all())


async def create_key(
    engine: AsyncEngine, tenant_id: str, scopes: list[str], *, actor: str = audit.SYSTEM
) -> str:
    """Store a new key for the tenant and return it; only its hash is kept."""
    key = generate_key()
    created = {"scopes": {"to": sorted(scopes)}, "prefix": {"to": key.prefix}}
    async with write_tx(engine) as conn:
        await conn.execute(
            api_keys.insert().values(
                id=key.id,
                tenant_id=tenant_id,
                key_hash=key.key_hash,
                prefix=key.prefix,
                scopes=",".join(sorted(scopes)),
                created_at=utcnow(),
            )
        )
        await audit.record(
            conn,
            audit.Change(
                tenant_id, actor, audit.Resource.API_KEY, key.id, audit.Action.CREATE, created
            ),
        )
    return key.secret


async def revoke_key(
    engine: AsyncEngine, tenant_id: str, key_id: str, *, actor: str = audit.SYSTEM
) -> bool:
    """Revoke one of the tenant's keys; False if it has no such key not yet revoked. API
    processes cache keys they have seen for up to 30 seconds."""
    now = utcnow()
    k = api_keys
    statement = (
        update(k)
        .where(k.c.tenant_id == tenant_id, k.c.id == key_id, k.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    async with write_tx(engine) as conn:
        if not (await conn.execute(statement)).rowcount:
            return False
        change = {"revoked_at": {"from": None, "to": now.isoformat()}}
        await audit.record(
            conn,
            audit.Change(
                tenant_id, actor, audit.Resource.API_KEY, key_id, audit.Action.REVOKE, change
            ),
        )
    return True


async def find_key(engine: AsyncEngine, secret: str) -> KeyGrant | None:
    query = select(api_keys.c.id, api_keys.c.tenant_id, api_keys.c.scopes).where(
        api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return KeyGrant(row.tenant_id, row.id, frozenset(row.scopes.split(",")))


async def update_settings(
    engine: AsyncEngine, tenant_id: str, changes: dict[str, Any], *, actor: str = audit.SYSTEM
) -> None:
    """Merge ``changes`` into the tenant's settings; a None value removes the setting."""
    async with write_tx(engine) as conn:
        found = (
            await conn.execute(
                select(tenants.c.name, tenants.c.settings)
                .where(tenants.c.id == tenant_id)
                .with_for_update()
            )
        ).first()
        if found is None:
            return
        current = found.settings
        merged = dict(current or {})
        for name, value in changes.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(settings=merged))
        change = audit.diff(current or {}, merged)
        if change:
            await audit.record(
                conn,
                audit.Change(
                    tenant_id, actor, audit.Resource.TENANT, found.name, audit.Action.UPDATE, change
                ),
            )
