"""Templates: every change is a new version; one version is active."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import chunks
from clarion.store.tables import template_versions, templates


async def put(
    engine: AsyncEngine,
    tenant_id: str,
    name: str,
    *,
    category: str,
    channels: dict[str, Any],
    locales: dict[str, Any],
) -> int:
    """Store a new version and make it active; returns its number."""
    now = utcnow()
    async with write_tx(engine) as conn:
        head = (
            await conn.execute(
                select(templates.c.latest_version)
                .where(templates.c.tenant_id == tenant_id, templates.c.name == name)
                .with_for_update()
            )
        ).first()
        version = 1 if head is None else head.latest_version + 1
        await conn.execute(
            template_versions.insert().values(
                tenant_id=tenant_id,
                name=name,
                version=version,
                category=category,
                channels=channels,
                locales=locales,
                created_at=now,
            )
        )
        if head is None:
            await conn.execute(
                templates.insert().values(
                    tenant_id=tenant_id,
                    name=name,
                    active_version=version,
                    latest_version=version,
                    updated_at=now,
                )
            )
        else:
            await conn.execute(
                update(templates)
                .where(templates.c.tenant_id == tenant_id, templates.c.name == name)
                .values(active_version=version, latest_version=version, updated_at=now)
            )
    return version


def _public(row: Any) -> dict[str, Any]:
    return {
        "name": row["name"],
        "version": row["version"],
        "category": row["category"],
        "channels": row["channels"],
        "locales": row["locales"],
        "created_at": as_utc(row["created_at"]),
    }


async def get(
    engine: AsyncEngine, tenant_id: str, name: str, version: int | None = None
) -> dict[str, Any] | None:
    tv = template_versions
    query = select(tv).where(tv.c.tenant_id == tenant_id, tv.c.name == name)
    if version is None:
        query = query.join(
            templates,
            (templates.c.tenant_id == tv.c.tenant_id)
            & (templates.c.name == tv.c.name)
            & (templates.c.active_version == tv.c.version),
        )
    else:
        query = query.where(tv.c.version == version)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return _public(row) if row else None


async def active_versions(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The active version of each (tenant, name) that exists."""
    found: dict[tuple[str, str], int] = {}
    for part in chunks(sorted(set(keys)), 1000):
        query = select(templates.c.tenant_id, templates.c.name, templates.c.active_version).where(
            tuple_(templates.c.tenant_id, templates.c.name).in_(part)
        )
        for row in await conn.execute(query):
            found[(row.tenant_id, row.name)] = row.active_version
    return found


async def load_versions(
    conn: AsyncConnection, keys: Iterable[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    tv = template_versions
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    for part in chunks(sorted(set(keys)), 500):
        query = select(tv).where(tuple_(tv.c.tenant_id, tv.c.name, tv.c.version).in_(part))
        for row in (await conn.execute(query)).mappings():
            found[(row["tenant_id"], row["name"], row["version"])] = _public(row)
    return found
