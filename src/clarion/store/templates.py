"""Templates: every change is a new version; one version is active."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.refusal import Refused
from clarion.store import audit
from clarion.store import layouts as layout_store
from clarion.store.db import shown, utcnow, write_tx
from clarion.store.sql import chunks, upsert
from clarion.store.tables import template_versions, templates
from clarion.store.versioned import Versioned

# What the API shows of a template version, and of a template in the list.
_VERSION_COLUMNS = ("name", "version", "category", "channels", "locales", "fallbacks", "created_at")
_TEMPLATE_COLUMNS = ("name", "active_version", "latest_version", "category", "updated_at")
# What a new version changes of its template's head.
_HEAD_UPDATED = ["active_version", "latest_version", "updated_at"]


async def put(
    engine: AsyncEngine,
    tenant_id: str,
    name: str,
    *,
    category: str,
    channels: dict[str, Any],
    locales: dict[str, Any],
    fallbacks: dict[str, str] | None = None,
    layout: str | None = None,
    actor: str = audit.SYSTEM,
) -> int | Refused:
    """Store a new version and make it active; returns its number. ``layout``: the layout
    its email part names, which must exist (else a refusal, ``unknown_layout``); it is held
    until the version is stored, so it cannot be deleted meanwhile (store/layouts.py)."""
    content = {"category": category, "channels": channels, "locales": locales}
    now = utcnow()
    async with write_tx(engine) as conn:
        if layout is not None and (
            refused := await layout_store.hold(conn, tenant_id, name=layout)
        ):
            return refused
        head = (
            await conn.execute(
                select(templates.c.latest_version, templates.c.active_version)
                .where(templates.c.tenant_id == tenant_id, templates.c.name == name)
                .with_for_update()
            )
        ).first()
        version = 1 if head is None else head.latest_version + 1
        before = (
            None if head is None else await _audited(conn, tenant_id, name, head.active_version)
        )
        key = {"tenant_id": tenant_id, "name": name}
        stored = {"version": version, **content, "fallbacks": fallbacks or None}
        await conn.execute(
            template_versions.insert().values(**key, **stored, layout=layout, created_at=now)
        )
        # The head names the new version as both the latest and the active one.
        heads = upsert(conn, templates, ["tenant_id", "name"], _HEAD_UPDATED)
        made = {"active_version": version, "latest_version": version, "updated_at": now}
        await conn.execute(heads.values(**key, **made))
        after = {**stored, "fallbacks": fallbacks or {}}
        action = audit.Action.CREATE if head is None else audit.Action.UPDATE
        change = audit.diff(before, after)
        await audit.record(
            conn, audit.Change(tenant_id, actor, audit.Resource.TEMPLATE, name, action, change)
        )
    return version


async def _audited(
    conn: AsyncConnection, tenant_id: str, name: str, version: int
) -> dict[str, Any] | None:
    """A stored version as the audit log compares it."""
    tv = template_versions
    query = select(tv).where(
        tv.c.tenant_id == tenant_id, tv.c.name == name, tv.c.version == version
    )
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    public = _public(row)
    return {k: public[k] for k in ("version", "category", "channels", "locales", "fallbacks")}


def _public(row: Any) -> dict[str, Any]:
    public = shown(row, _VERSION_COLUMNS)
    public["fallbacks"] = public["fallbacks"] or {}
    return public


TEMPLATES = Versioned(
    heads=templates,
    versions=template_versions,
    key="name",
    content=("category", "channels", "locales", "fallbacks"),
    resource=audit.Resource.TEMPLATE,
    public=_public,
)


async def get(
    engine: AsyncEngine, tenant_id: str, name: str, version: int | None = None
) -> dict[str, Any] | None:
    return await TEMPLATES.get(engine, tenant_id, name, version)


async def list_templates(
    engine: AsyncEngine, tenant_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Templates by name, with their active version's category; ``after`` is the last name
    of the previous page."""
    return await TEMPLATES.heads_page(
        engine, tenant_id, _TEMPLATE_COLUMNS, after=after, limit=limit
    )


async def list_versions(
    engine: AsyncEngine, tenant_id: str, name: str, *, before: int | None, limit: int
) -> list[dict[str, Any]] | None:
    """A template's versions, newest first; None when there is no such template."""
    return await TEMPLATES.versions_page(
        engine, tenant_id, name, ("version", "category", "created_at"), before=before, limit=limit
    )


async def rollback(
    engine: AsyncEngine, tenant_id: str, name: str, version: int, *, actor: str = audit.SYSTEM
) -> str | None:
    """Make an earlier (or any stored) version active again.

    Returns None when done, else what is missing: ``"template"`` or ``"version"``.
    """
    missing = await TEMPLATES.rollback(engine, tenant_id, name, version, actor=actor)
    return "template" if missing == "head" else missing


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
    engine: AsyncEngine, keys: Iterable[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    tv = template_versions
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    async with engine.connect() as conn:
        for part in chunks(sorted(set(keys)), 500):
            query = select(tv).where(tuple_(tv.c.tenant_id, tv.c.name, tv.c.version).in_(part))
            for row in (await conn.execute(query)).mappings():
                found[(row["tenant_id"], row["name"], row["version"])] = _public(row)
    return found


async def existing(engine: AsyncEngine, tenant_id: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` are templates of the tenant."""
    async with engine.connect() as conn:
        found = await active_versions(conn, ((tenant_id, name) for name in names))
    return {name for _, name in found}
