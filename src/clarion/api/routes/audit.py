"""``GET /v1/audit``: the tenant's audit log, newest first (scope ``admin``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from clarion.api.auth import Admin
from clarion.api.listing import Newest, cursor_of, time_range
from clarion.api.outputs import AuditPage
from clarion.api.responses import JSONResponse
from clarion.store import audit as store
from clarion.store.pages import Position

router = APIRouter(tags=["audit"])
Text = Annotated[str | None, Query(min_length=1, max_length=200)]


@router.get("/v1/audit", response_model=AuditPage)
async def list_audit(
    caller: Admin,
    at: Newest,
    resource: store.Resource | None = None,
    name: Text = None,
    key_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    action: store.Action | None = None,
    after: Annotated[datetime | None, Query(description="At or after (RFC 3339)")] = None,
    before: Annotated[datetime | None, Query(description="Before (RFC 3339)")] = None,
) -> JSONResponse:
    """The audit log: every change to the tenant's configuration, newest first.

    Changes to templates, providers, webhooks, categories, API keys and tenant settings, and
    recipients' erasures: who (`key_id`: the API key's id, or `cli` for the `clarion` command),
    what (`resource`, `name`, `action`), when (`at`) and the fields changed (`diff`, secrets
    shown as `***`). Filters combine; `after` is inclusive, `before` exclusive."""
    low, high = time_range(after, before, ("after", "before"))
    where = store.AuditFilter(
        resource=resource.value if resource else None,
        name=name,
        actor=key_id,
        action=action.value if action else None,
        after=low,
        before=high,
    )
    rows = await store.list_page(caller.engine, caller.tenant_id, where, at.position, at.read)
    return JSONResponse(at.page(rows, _cursor))


def _cursor(row: Mapping[str, Any]) -> str:
    return cursor_of(Position(row["at"], row["id"]))
