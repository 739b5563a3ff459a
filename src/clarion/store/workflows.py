"""Workflow definitions: every change is a new version; one version is active."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.workflows import Workflow
from clarion.store import audit
from clarion.store.pg import PgPool
from clarion.store.sql import grouped
from clarion.store.tables import workflow_versions, workflows
from clarion.store.versioned import Versioned, shown_version

# What the API shows of a workflow version, and of a workflow in the list.
_VERSION_COLUMNS = ("key", "version", "name", "category", "steps", "created_at")
_LISTED_COLUMNS = ("key", "name", "category", "active_version", "latest_version", "updated_at")
_HISTORY_COLUMNS = ("version", "name", "category", "steps", "created_at")

WORKFLOWS = Versioned(
    heads=workflows,
    versions=workflow_versions,
    key="key",
    content=("name", "category", "steps"),
    resource=audit.Resource.WORKFLOW,
    public=shown_version(_VERSION_COLUMNS),
)


async def list_workflows(
    engine: AsyncEngine, tenant_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Workflows by key, with their active version's name and category."""
    return await WORKFLOWS.heads_page(engine, tenant_id, _LISTED_COLUMNS, after=after, limit=limit)


async def list_versions(
    engine: AsyncEngine, tenant_id: str, key: str, *, before: int | None, limit: int
) -> list[dict[str, Any]] | None:
    """A workflow's versions, newest first, each with its name, category, step count and
    whether it is active; None when there is no such workflow."""
    rows = await WORKFLOWS.versions_page(
        engine, tenant_id, key, _HISTORY_COLUMNS, before=before, limit=limit
    )
    if rows is None:
        return None
    return [
        {**{k: v for k, v in row.items() if k != "steps"}, "steps": len(row["steps"])}
        for row in rows
    ]


async def active_versions(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The active version of each (tenant, workflow key) that exists."""
    h = workflows
    found: dict[tuple[str, str], int] = {}
    for tenant, names in grouped(keys).items():
        query = select(h.c.key, h.c.active_version).where(
            h.c.tenant_id == tenant, h.c.key.in_(names)
        )
        found.update(((tenant, row.key), row.active_version) for row in await conn.execute(query))
    return found


async def load_versions(
    engine: AsyncEngine, keys: Iterable[tuple[str, str, int]], pg: PgPool | None = None
) -> dict[tuple[str, str, int], Workflow]:
    """Stored workflow versions, as checked workflows (they were checked when stored);
    on PostgreSQL in one statement over the direct pool when given. Not cached: a deleted
    workflow's versions are gone, and its key may be stored again from version 1."""
    v = workflow_versions
    found: dict[tuple[str, str, int], Workflow] = {}
    wanted = sorted(set(keys))
    if not wanted:
        return found
    if pg is not None:
        rows = await pg.fetch(
            "SELECT v.tenant_id, v.key, v.version, v.name, v.category, v.steps"
            " FROM workflow_versions v JOIN unnest($1::text[], $2::text[], $3::int[])"
            " AS k(tenant_id, key, version)"
            " ON v.tenant_id = k.tenant_id AND v.key = k.key AND v.version = k.version",
            [k[0] for k in wanted],
            [k[1] for k in wanted],
            [k[2] for k in wanted],
        )
        for row in rows:
            found[(row["tenant_id"], row["key"], row["version"])] = Workflow.stored(
                row["name"], row["category"], row["steps"]
            )
        return found
    async with engine.connect() as conn:
        for tenant, key, version in wanted:
            query = select(v.c.name, v.c.category, v.c.steps).where(
                v.c.tenant_id == tenant, v.c.key == key, v.c.version == version
            )
            row = (await conn.execute(query)).first()
            if row is not None:
                found[(tenant, key, version)] = Workflow.stored(row.name, row.category, row.steps)
    return found
