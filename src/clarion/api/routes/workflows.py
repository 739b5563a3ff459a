"""``/v1/workflows``: store a new version, read, list, roll back, delete; cancel runs by key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from clarion.api.auth import Manager, Reader, Sender
from clarion.api.listing import KeyCursor, Size, by, page
from clarion.api.outputs import (
    RunsCancelled,
    WorkflowPage,
    WorkflowStored,
    WorkflowVersionOut,
    WorkflowVersionPage,
)
from clarion.api.responses import JSONResponse, deleted, or_404
from clarion.api.routes.templates import Version, rolled_back, version_of
from clarion.api.schemas import Body, NamePath, RecipientId, WorkflowIn
from clarion.domain import workflows as definitions
from clarion.domain.models import ALL_CHANNELS
from clarion.errors import ValidationFailed
from clarion.store import categories as category_store
from clarion.store import runs as run_store
from clarion.store import templates as template_store
from clarion.store import workflows as workflow_store
from clarion.store.db import utcnow
from clarion.store.workflows import WORKFLOWS, list_workflows

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])


@router.put("/{key}", response_model=WorkflowStored)
async def put(caller: Manager, key: NamePath, body: WorkflowIn) -> JSONResponse:
    """Store a new version of a workflow and make it active.

    Each step is checked (its fields, templates, channels and expressions); a fault is a 422
    `invalid_workflow` whose details name the step (index and id) and the field."""
    if body.category is not None and not await category_store.known(
        caller.engine, caller.tenant_id, [body.category]
    ):
        raise ValidationFailed(f"no category named {body.category!r}", code="unknown_category")
    steps = [step.model_dump(by_alias=True, exclude_none=True) for step in body.steps]
    named = {step.template for step in body.steps if step.template}
    templates = await template_store.existing(caller.engine, caller.tenant_id, named)
    workflow = definitions.check(body.name, body.category, steps, ALL_CHANNELS, templates)
    content = {"name": workflow.name, "category": workflow.category, "steps": steps}
    version = await WORKFLOWS.put(
        caller.engine, caller.tenant_id, key, content, actor=caller.key_id
    )
    return JSONResponse({"key": key, "version": version}, status_code=201 if version == 1 else 200)


@router.get("/{key}", response_model=WorkflowVersionOut)
async def get(caller: Reader, key: NamePath, version: Version = None) -> JSONResponse:
    """The active version of a workflow, or the one asked for."""
    return await version_of(caller, WORKFLOWS, "workflow", key, version)


@router.get("", response_model=WorkflowPage)
async def list_all(caller: Reader, limit: Size = 50, cursor: KeyCursor = None) -> JSONResponse:
    """List workflows by key (cursor-paginated)."""
    rows = await list_workflows(caller.engine, caller.tenant_id, after=cursor, limit=limit + 1)
    return JSONResponse(page(rows, limit, by("key")))


@router.get("/{key}/versions", response_model=WorkflowVersionPage)
async def list_versions(
    caller: Reader, key: NamePath, limit: Size = 50, cursor: Version = None
) -> JSONResponse:
    """List a workflow's versions, newest first (cursor-paginated): which is active, and
    each one's name, category, number of steps and creation time. Read one whole with
    `GET /v1/workflows/{key}?version=N`."""
    rows = await workflow_store.list_versions(
        caller.engine, caller.tenant_id, key, before=cursor, limit=limit + 1
    )
    return JSONResponse(page(or_404(rows, f"no workflow {key!r}"), limit, by("version")))


class WorkflowRollbackIn(Body):
    version: int = Field(ge=1, le=2_147_483_647)


@router.post("/{key}/rollback", response_model=WorkflowVersionOut)
async def rollback(caller: Manager, key: NamePath, body: WorkflowRollbackIn) -> JSONResponse:
    """Make a stored version active again; answers with that version."""
    return await rolled_back(caller, WORKFLOWS, "workflow", key, body.version)


@router.delete("/{key}", status_code=204, response_class=Response)
async def delete(caller: Manager, key: NamePath) -> Response:
    """Delete a workflow with all its versions."""
    found = await WORKFLOWS.delete(caller.engine, caller.tenant_id, key, actor=caller.key_id)
    return deleted(found, "workflow", key)


class WorkflowCancelIn(Body):
    cancellation_key: str = Field(min_length=1, max_length=200)
    recipient_ids: list[RecipientId] | None = Field(default=None, min_length=1, max_length=1000)


@router.post("/{key}/cancel", status_code=202, response_model=RunsCancelled)
async def cancel(caller: Sender, key: NamePath, body: WorkflowCancelIn) -> JSONResponse:
    """Cancel every run of this workflow with the cancellation key (of these recipients
    only, when given) that has not ended: waiting in a delay, at a channel step, or about
    to start. Their deliveries still queued or scheduled are cancelled; one whose attempt
    is under way may still go out."""
    cancelled = await run_store.cancel_by_key(
        caller.engine,
        caller.tenant_id,
        key,
        body.cancellation_key,
        body.recipient_ids,
        utcnow(),
    )
    return JSONResponse({"cancelled": cancelled}, status_code=202)
