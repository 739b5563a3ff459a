"""Workflow definitions: every change is a new version; one version is active."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.store import audit
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
    """Workflows by key, with their active version's name and category."""
    return await WORKFLOWS.heads_page(engine, tenant_id, _LISTED_COLUMNS, after=after, limit=limit)
