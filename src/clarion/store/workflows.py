"""Workflow definitions: every change is a new version; one version is active."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store import audit
from clarion.store.db import shown
from clarion.store.tables import workflow_versions, workflows
from clarion.store.versioned import Versioned, shown_version

# What the API shows of a workflow version, and of a workflow in the list.
_VERSION_COLUMNS = ("key", "version", "name", "category", "steps", "created_at")
_LISTED_COLUMNS = ("key", "name", "category", "active_version", "latest_version", "updated_at")

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
    """Workflows by key, with their active version's name and category; ``after`` is the
    last key of the previous page."""
    w, wv = workflows, workflow_versions
    query = (
        select(w.c.key, w.c.active_version, w.c.latest_version, w.c.updated_at)
        .add_columns(wv.c.name, wv.c.category)
        .join(
            wv,
            (wv.c.tenant_id == w.c.tenant_id)
            & (wv.c.key == w.c.key)
            & (wv.c.version == w.c.active_version),
        )
        .where(w.c.tenant_id == tenant_id)
    )
    if after is not None:
        query = query.where(w.c.key > after)
    query = query.order_by(w.c.key).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [shown(r, _LISTED_COLUMNS) for r in rows]
