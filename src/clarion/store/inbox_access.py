"""Who may read an inbox: tenants' inbox secrets and the revocations of recipient tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.security.inbox_tokens import MAX_TTL, new_secret, recipient_digest
from clarion.security.secrets import MASK
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import upsert
from clarion.store.tables import inbox_revocations, tenants

# A revocation of every token of a tenant (its inbox secret was replaced).
EVERYONE = "*"


async def secret(engine: AsyncEngine, tenant_id: str, *, create: bool = False) -> str | None:
    """The tenant's inbox secret; made on first use when ``create``. None: no such tenant
    (or none made yet)."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(select(tenants.c.inbox_secret).where(tenants.c.id == tenant_id))
        ).first()
    if found is None:
        return None
    if found.inbox_secret is not None or not create:
        return found.inbox_secret  # type: ignore[no-any-return]
    async with write_tx(engine) as conn:
        await conn.execute(
            update(tenants)
            .where(tenants.c.id == tenant_id, tenants.c.inbox_secret.is_(None))
            .values(inbox_secret=new_secret())
        )
        value = (
            await conn.execute(select(tenants.c.inbox_secret).where(tenants.c.id == tenant_id))
        ).scalar_one()
    return value  # type: ignore[no-any-return]


async def revoke(conn: AsyncConnection, tenant_id: str, recipient_id: str, at: datetime) -> None:
    """Refuse the recipient's tokens issued before ``at`` (inside the caller's transaction).
    The recipient is recorded by its digest (``recipient_digest``); a tenant that never
    issued a token has nothing to revoke."""
    found = (
        await conn.execute(select(tenants.c.inbox_secret).where(tenants.c.id == tenant_id))
    ).scalar()
    if found is None:
        return
    await _record(conn, tenant_id, recipient_digest(found, recipient_id), at)


async def _record(conn: AsyncConnection, tenant_id: str, who: str, at: datetime) -> None:
    await conn.execute(
        upsert(conn, inbox_revocations, ["tenant_id", "recipient_id"], ["revoked_at"]),
        [{"tenant_id": tenant_id, "recipient_id": who, "revoked_at": at}],
    )


async def rotate(engine: AsyncEngine, tenant_id: str, *, actor: str = audit.SYSTEM) -> datetime:
    """Replace the tenant's inbox secret: every token issued so far stops working."""
    now = utcnow()
    async with write_tx(engine) as conn:
        name = (
            await conn.execute(
                update(tenants)
                .where(tenants.c.id == tenant_id)
                .values(inbox_secret=new_secret())
                .returning(tenants.c.name)
            )
        ).scalar()
        await _record(conn, tenant_id, EVERYONE, now)
        change = {"inbox_secret": {"from": MASK, "to": MASK}}
        await audit.record(
            conn,
            audit.Change(
                tenant_id,
                actor,
                audit.Resource.TENANT,
                name or tenant_id,
                audit.Action.ROTATE,
                change,
            ),
        )
    return now


async def revocations_since(
    engine: AsyncEngine, since: datetime | None
) -> list[tuple[str, str, datetime]]:
    """Revocations recorded after ``since`` (those that can still matter when None: no
    token lives longer than ``MAX_TTL``)."""
    async with engine.connect() as conn:
        return await revocations_in(conn, since)


async def revocations_in(
    conn: AsyncConnection, since: datetime | None
) -> list[tuple[str, str, datetime]]:
    """:func:`revocations_since` on the caller's connection."""
    floor = since if since is not None else utcnow() - timedelta(seconds=MAX_TTL)
    r = inbox_revocations
    query = select(r.c.tenant_id, r.c.recipient_id, r.c.revoked_at).where(r.c.revoked_at > floor)
    rows = (await conn.execute(query)).all()
    return [(row[0], row[1], as_utc(row[2]) or floor) for row in rows]
