"""Email layouts (every change a new version; one version is active), the tenant's default
layout and its brand.

The default layout's name and the brand are tenant settings (``default_layout``,
``brand``). Every write here moves the tenant's version (store/categories.py ``bump``), in
its transaction: the planner caches a tenant's layouts and brand by that version.

A layout is deleted only when nothing names it: neither a template's active version, nor
the tenant's settings as its default (a :class:`Refused` ``layout_in_use`` otherwise). A
template naming a layout locks the layout's head in the template's transaction, so a
concurrent delete either sees the template or the template sees the layout gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.refusal import Reason, Refused
from clarion.store import audit
from clarion.store import categories as category_store
from clarion.store.db import write_tx
from clarion.store.sql import chunks
from clarion.store.tables import layout_versions, layouts, template_versions, templates, tenants
from clarion.store.tenants import merge_settings
from clarion.store.versioned import Versioned, shown_version

MAX_LAYOUTS = 100  # layouts a tenant may have: the planner keeps them all compiled
DEFAULT = "default_layout"  # the tenant setting naming the default layout
BRAND = "brand"  # the tenant setting holding the brand

_VERSION_COLUMNS = ("name", "version", "html", "text", "locales", "created_at")
_LISTED_COLUMNS = ("name", "active_version", "latest_version", "updated_at")
_HISTORY_COLUMNS = ("version", "created_at")

LAYOUTS = Versioned(
    heads=layouts,
    versions=layout_versions,
    key="name",
    content=("html", "text", "locales"),
    resource=audit.Resource.LAYOUT,
    public=shown_version(_VERSION_COLUMNS),
    touch=category_store.bump,
)


async def _settings(conn: AsyncConnection, tenant_id: str) -> dict[str, Any]:
    found = (
        await conn.execute(select(tenants.c.settings).where(tenants.c.id == tenant_id))
    ).scalar()
    return found if isinstance(found, dict) else {}


async def put(
    engine: AsyncEngine,
    tenant_id: str,
    name: str,
    content: dict[str, Any],
    *,
    default: bool | None = None,
    actor: str = audit.SYSTEM,
) -> int | Refused:
    """Store ``content`` (``html``, ``text``, ``locales``) as a new version of the layout
    and make it active; with ``default``, make it the tenant's default layout (True) or, if
    it is, no longer (False). Returns the version's number."""
    async with write_tx(engine) as conn:
        if await LAYOUTS.active(conn, tenant_id, name, lock=True) is None:
            count = (
                select(func.count()).select_from(layouts).where(layouts.c.tenant_id == tenant_id)
            )
            if ((await conn.execute(count)).scalar() or 0) >= MAX_LAYOUTS:
                return Refused(
                    Reason.TOO_MANY_LAYOUTS,
                    f"a tenant has at most {MAX_LAYOUTS} layouts",
                    [{"limit": MAX_LAYOUTS}],
                )
        version = await LAYOUTS.put_in(conn, tenant_id, name, content, actor=actor)
        current = (await _settings(conn, tenant_id)).get(DEFAULT)
        if default is True and current != name:
            await _set_default(conn, tenant_id, name, name, actor)
        elif default is False and current == name:
            await _set_default(conn, tenant_id, None, name, actor)
    return version


async def _set_default(
    conn: AsyncConnection, tenant_id: str, value: str | None, name: str, actor: str
) -> None:
    await merge_settings(
        conn, tenant_id, {DEFAULT: value}, actor=actor, resource=audit.Resource.LAYOUT, name=name
    )


async def default_of(engine: AsyncEngine, tenant_id: str) -> str | None:
    """The name of the tenant's default layout, if it has one."""
    async with engine.connect() as conn:
        found = (await _settings(conn, tenant_id)).get(DEFAULT)
    return found if isinstance(found, str) else None


async def get(
    engine: AsyncEngine, tenant_id: str, name: str, version: int | None = None
) -> dict[str, Any] | None:
    """The active version of a layout (or the one asked for), with ``default``."""
    found = await LAYOUTS.get(engine, tenant_id, name, version)
    if found is None:
        return None
    return {**found, "default": await default_of(engine, tenant_id) == name}


async def list_layouts(
    engine: AsyncEngine, tenant_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Layouts by name, each with whether it is the default."""
    rows = await LAYOUTS.heads_page(engine, tenant_id, _LISTED_COLUMNS, after=after, limit=limit)
    default = await default_of(engine, tenant_id)
    return [{**row, "default": row["name"] == default} for row in rows]


async def list_versions(
    engine: AsyncEngine, tenant_id: str, name: str, *, before: int | None, limit: int
) -> list[dict[str, Any]] | None:
    """A layout's versions, newest first; None when there is no such layout."""
    return await LAYOUTS.versions_page(
        engine, tenant_id, name, _HISTORY_COLUMNS, before=before, limit=limit
    )


async def _users(conn: AsyncConnection, tenant_id: str, name: str) -> list[str]:
    """The templates whose active version names the layout (the first few)."""
    h, v = templates, template_versions
    query = (
        select(h.c.name)
        .join(
            v,
            (v.c.tenant_id == h.c.tenant_id)
            & (v.c.name == h.c.name)
            & (v.c.version == h.c.active_version),
        )
        .where(h.c.tenant_id == tenant_id, v.c.layout == name)
        .order_by(h.c.name)
        .limit(10)
    )
    return list((await conn.execute(query)).scalars())


async def delete(
    engine: AsyncEngine, tenant_id: str, name: str, *, actor: str = audit.SYSTEM
) -> bool | Refused:
    """Delete a layout with all its versions; False when there is none, a refusal while a
    template's active version or the tenant's default names it."""
    async with write_tx(engine) as conn:
        current = await LAYOUTS.active(conn, tenant_id, name, lock=True)
        if current is None:
            return False
        if (await _settings(conn, tenant_id)).get(DEFAULT) == name:
            return Refused(
                Reason.LAYOUT_IN_USE,
                f"layout {name!r} is the tenant's default: make another one the default, or "
                'store it with "default": false, first',
                [{"default": True}],
            )
        users = await _users(conn, tenant_id, name)
        if users:
            return Refused(
                Reason.LAYOUT_IN_USE,
                f"layout {name!r} is named by the active version of templates {users}",
                [{"template": user} for user in users],
            )
        await LAYOUTS.delete_in(conn, tenant_id, name, current, actor=actor)
    return True


async def hold(conn: AsyncConnection, tenant_id: str, name: str) -> Refused | None:
    """In a template's write transaction: lock the layout it names until the transaction
    ends (a delete waits for it, then sees the template); a refusal if there is none."""
    if await LAYOUTS.active(conn, tenant_id, name, lock=True) is None:
        return Refused(
            Reason.UNKNOWN_LAYOUT,
            f"no layout named {name!r}",
            [{"field": "channels.email.layout", "message": "not a layout of the tenant"}],
        )
    return None


async def exists(engine: AsyncEngine, tenant_id: str, name: str) -> bool:
    async with engine.connect() as conn:
        return await LAYOUTS.active(conn, tenant_id, name) is not None


# -- the brand ---------------------------------------------------------------------------------


async def brand_of(engine: AsyncEngine, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's brand; None when it has none."""
    async with engine.connect() as conn:
        found = (await _settings(conn, tenant_id)).get(BRAND)
    return found if isinstance(found, dict) else None


async def put_brand(
    engine: AsyncEngine, tenant_id: str, brand: dict[str, Any] | None, *, actor: str = audit.SYSTEM
) -> None:
    """Replace the tenant's brand (None: remove it)."""
    async with write_tx(engine) as conn:
        await merge_settings(
            conn, tenant_id, {BRAND: brand}, actor=actor, resource=audit.Resource.BRAND, name=BRAND
        )
        await category_store.bump(conn, tenant_id)


# -- what the planner and previews load --------------------------------------------------------


async def looks_for(
    engine: AsyncEngine, tenant_ids: Iterable[str]
) -> dict[str, tuple[dict[str, Any] | None, str | None, dict[str, int]]]:
    """For each tenant: its brand, its default layout's name, and each layout's active
    version (two queries)."""
    wanted = sorted(set(tenant_ids))
    found: dict[str, tuple[dict[str, Any] | None, str | None, dict[str, int]]] = {}
    heads: dict[str, dict[str, int]] = {t: {} for t in wanted}
    async with engine.connect() as conn:
        for part in chunks(wanted, 1000):
            query = select(tenants.c.id, tenants.c.settings).where(tenants.c.id.in_(part))
            settings = {row.id: row.settings or {} for row in await conn.execute(query)}
            query = select(layouts.c.tenant_id, layouts.c.name, layouts.c.active_version).where(
                layouts.c.tenant_id.in_(part)
            )
            for row in await conn.execute(query):
                heads[row.tenant_id][row.name] = row.active_version
            for tenant_id in part:
                own = settings.get(tenant_id, {})
                brand, default = own.get(BRAND), own.get(DEFAULT)
                found[tenant_id] = (
                    brand if isinstance(brand, dict) else None,
                    default if isinstance(default, str) else None,
                    heads[tenant_id],
                )
    return found


async def load_versions(
    engine: AsyncEngine, keys: Iterable[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Stored layout versions by (tenant, name, version)."""
    v = layout_versions
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    async with engine.connect() as conn:
        for part in chunks(sorted(set(keys)), 500):
            query = select(v).where(tuple_(v.c.tenant_id, v.c.name, v.c.version).in_(part))
            for row in (await conn.execute(query)).mappings():
                found[(row["tenant_id"], row["name"], row["version"])] = dict(row)
    return found
