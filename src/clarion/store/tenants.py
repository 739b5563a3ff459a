"""Tenants and their API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.ids import new_id
from clarion.security.keys import generate_key, generate_webhook_secret, hash_key
from clarion.security.secrets import MASK
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.pages import Position, newest_first
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


async def _insert(
    engine: AsyncEngine, table: Table, row: dict[str, Any], change: audit.Change
) -> None:
    """Insert ``row`` into ``table`` and record its creation (``change``) in the audit log,
    in one transaction."""
    async with write_tx(engine) as conn:
        await conn.execute(table.insert().values(row))
        await audit.record(conn, change)


async def create_tenant(engine: AsyncEngine, name: str, *, actor: str = audit.SYSTEM) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name, webhook_secret=generate_webhook_secret())
    row = {
        "id": tenant.id,
        "name": name,
        "webhook_secret": tenant.webhook_secret,
        "settings": {},
        "created_at": utcnow(),
    }
    created = {"webhook_secret": {"to": MASK}}
    change = audit.Change(
        tenant.id, actor, audit.Resource.TENANT, name, audit.Action.CREATE, created
    )
    await _insert(engine, tenants, row, change)
    return tenant


async def get_tenant_by_name(engine: AsyncEngine, name: str) -> Tenant | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.name == name))).first()
    return Tenant(row.id, row.name, row.webhook_secret) if row else None


async def get_tenant(engine: AsyncEngine, tenant_id: str) -> Tenant | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    return Tenant(row.id, row.name, row.webhook_secret) if row else None


def webhook_secrets(engine: AsyncEngine) -> Callable[[str], Awaitable[str | None]]:
    """A reader of tenants' webhook secrets (None: no such tenant), for the code below the
    store that derives keys from them (:mod:`clarion.security.unsubscribe`)."""

    async def read(tenant_id: str) -> str | None:
        tenant = await get_tenant(engine, tenant_id)
        return tenant.webhook_secret if tenant is not None else None

    return read


async def count_tenants(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(tenants.c.id).limit(1))).all())


class KeyOptions(TypedDict, total=False):
    """A new key's name, and who made it (for the audit log)."""

    name: str | None
    actor: str


async def create_key(
    engine: AsyncEngine, tenant_id: str, scopes: list[str], **options: Unpack[KeyOptions]
) -> str:
    """Store a new key for the tenant and return it; only its hash is kept."""
    made = await issue_key(engine, tenant_id, scopes, **options)
    return str(made["secret"])


async def issue_key(
    engine: AsyncEngine,
    tenant_id: str,
    scopes: list[str],
    *,
    name: str | None = None,
    actor: str = audit.SYSTEM,
) -> dict[str, Any]:
    """Store a new key for the tenant: its public view (as :func:`list_keys` shows it)
    plus ``secret``, the whole key, which is not kept anywhere."""
    key = generate_key()
    now = utcnow()
    created = {
        "name": {"to": name},
        "scopes": {"to": sorted(scopes)},
        "prefix": {"to": key.prefix},
    }
    row = {
        "id": key.id,
        "tenant_id": tenant_id,
        "key_hash": key.key_hash,
        "prefix": key.prefix,
        "scopes": ",".join(sorted(scopes)),
        "name": name,
        "created_at": now,
    }
    change = audit.Change(
        tenant_id, actor, audit.Resource.API_KEY, key.id, audit.Action.CREATE, created
    )
    await _insert(engine, api_keys, row, change)
    return {
        "id": key.id,
        "name": name,
        "prefix": key.prefix,
        "scopes": sorted(scopes),
        "created_at": now,
        "revoked_at": None,
        "secret": key.secret,
    }


async def revoke_key(
    engine: AsyncEngine, tenant_id: str, key_id: str, *, actor: str = audit.SYSTEM
) -> str:
    """Revoke one of the tenant's keys: ``"revoked"``, ``"already"`` (it was) or
    ``"unknown"``. API processes cache keys they have seen for up to 30 seconds."""
    now = utcnow()
    k = api_keys
    statement = (
        update(k)
        .where(k.c.tenant_id == tenant_id, k.c.id == key_id, k.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    async with write_tx(engine) as conn:
        if not (await conn.execute(statement)).rowcount:
            found = await conn.execute(
                select(k.c.id).where(k.c.id == key_id, k.c.tenant_id == tenant_id)
            )
            return "already" if found.first() else "unknown"
        change = {"revoked_at": {"from": None, "to": now.isoformat()}}
        await audit.record(
            conn,
            audit.Change(
                tenant_id, actor, audit.Resource.API_KEY, key_id, audit.Action.REVOKE, change
            ),
        )
    return "revoked"


async def find_key(engine: AsyncEngine, secret: str) -> KeyGrant | None:
    query = select(api_keys.c.id, api_keys.c.tenant_id, api_keys.c.scopes).where(
        api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return KeyGrant(row.tenant_id, row.id, frozenset(row.scopes.split(",")))


async def settings_of(engine: AsyncEngine, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's own settings (None: none, or no such tenant)."""
    async with engine.connect() as conn:
        found = await conn.execute(select(tenants.c.settings).where(tenants.c.id == tenant_id))
        value = found.scalar()
    return value if isinstance(value, dict) else None


async def update_settings(
    engine: AsyncEngine, tenant_id: str, changes: dict[str, Any], *, actor: str = audit.SYSTEM
) -> None:
    """Merge ``changes`` into the tenant's settings; a None value removes the setting."""
    async with write_tx(engine) as conn:
        await merge_settings(conn, tenant_id, changes, actor=actor)


async def merge_settings(
    conn: AsyncConnection,
    tenant_id: str,
    changes: dict[str, Any],
    *,
    actor: str = audit.SYSTEM,
    resource: audit.Resource = audit.Resource.TENANT,
    name: str | None = None,
) -> dict[str, Any] | None:
    """:func:`update_settings` in the caller's write transaction, audited as a change of
    ``resource`` named ``name`` (else the tenant's name); returns the settings as they were
    (None: no such tenant)."""
    found = (
        await conn.execute(
            select(tenants.c.name, tenants.c.settings)
            .where(tenants.c.id == tenant_id)
            .with_for_update()
        )
    ).first()
    if found is None:
        return None
    current = dict(found.settings or {})
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(settings=merged))
    change = audit.diff(current, merged)
    if change:
        await audit.record(
            conn,
            audit.Change(
                tenant_id, actor, resource, name or found.name, audit.Action.UPDATE, change
            ),
        )
    return current


async def list_tenants(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every tenant by name, with how many live keys it has."""
    live = (
        select(api_keys.c.tenant_id, func.count().label("live_keys"))
        .where(api_keys.c.revoked_at.is_(None))
        .group_by(api_keys.c.tenant_id)
        .subquery()
    )
    query = (
        select(tenants.c.id, tenants.c.name, tenants.c.created_at, live.c["live_keys"])
        .select_from(tenants.outerjoin(live, live.c.tenant_id == tenants.c.id))
        .order_by(tenants.c.name)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {"id": r.id, "name": r.name, "created_at": as_utc(r.created_at), "keys": r.live_keys or 0}
        for r in rows
    ]


_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _key_view(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "prefix": r.prefix,
        "scopes": r.scopes.split(","),
        "created_at": as_utc(r.created_at),
        "revoked_at": as_utc(r.revoked_at),
    }


async def list_keys(engine: AsyncEngine, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's keys, oldest first: id, name, prefix, scopes, created and revoked times
    (the secret itself is never stored)."""
    query = (
        select(*_KEY_COLUMNS)
        .where(api_keys.c.tenant_id == tenant_id)
        .order_by(api_keys.c.created_at, api_keys.c.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_key_view(r) for r in rows]


async def list_keys_page(
    engine: AsyncEngine, tenant_id: str, position: Position | None, limit: int
) -> list[dict[str, Any]]:
    """A tenant's keys newest first, strictly after (older than) ``position``."""
    k = api_keys
    query = select(*_KEY_COLUMNS).where(k.c.tenant_id == tenant_id)
    query = newest_first(query, k.c.created_at, k.c.id, position, limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_key_view(r) for r in rows]
