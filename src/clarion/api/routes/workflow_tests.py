"""``POST /v1/workflows/{key}/test``: a workflow run on paper, nothing stored or sent."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from clarion.api.auth import Reader
from clarion.api.outputs import WorkflowTestOut
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, NamePath, RecipientId, RecipientIn
from clarion.domain.rendering import compile_stored
from clarion.domain.workflows import STEP_FIELDS, Workflow
from clarion.errors import NotFound, TemplateError, ValidationFailed
from clarion.pipeline.layouts import look_of
from clarion.pipeline.planner import render_context
from clarion.pipeline.runs import on_paper
from clarion.store import recipients as recipient_store
from clarion.store import templates as template_store
from clarion.store.db import utcnow
from clarion.store.workflows import WORKFLOWS

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

_ASSUMPTION = re.compile(r"^steps\.([a-z0-9_]{1,40})\.([a-z]+)$")
_DIGEST_COUNT = "digest.count"


class WorkflowTestIn(Body):
    recipient_id: RecipientId | None = None
    recipient: RecipientIn | None = Field(
        None, description="A recipient that need not exist (instead of recipient_id)"
    )
    data: dict[str, Any] = Field(default_factory=dict)
    assume: dict[str, str | bool | int] = Field(
        default_factory=dict,
        max_length=200,
        description='What expressions read of earlier steps, e.g. {"steps.feed.read": true}, '
        'and of a digest step\'s window: {"digest.count": 5}',
    )
    version: int | None = Field(default=None, ge=1, le=2_147_483_647)


async def _recipient(caller: Any, recipient_id: str | None) -> dict[str, Any]:
    """The stored recipient the test names (404 if unknown), or nobody."""
    if recipient_id is None:
        return {}
    loaded = await recipient_store.get(caller.engine, caller.tenant_id, recipient_id)
    if loaded is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    return loaded


def _assumptions(
    workflow: Workflow, raw: dict[str, str | bool | int]
) -> tuple[dict[str, dict[str, Any]], int]:
    """What the test assumes of each step (by id), and the count of a digest's window."""
    ids = {step.id for step in workflow.steps}
    found: dict[str, dict[str, Any]] = {}
    count = 1
    problems = []
    for name, value in raw.items():
        if name == _DIGEST_COUNT:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append({"field": f"assume.{name}", "message": "a whole number from 1"})
            else:
                count = value
            continue
        match = _ASSUMPTION.match(name)
        if match is None or match.group(1) not in ids or match.group(2) not in STEP_FIELDS:
            problems.append({"field": f"assume.{name}", "message": "not steps.<id>.<field>"})
            continue
        field = match.group(2)
        if not isinstance(value, str if field == "status" else bool):
            kind = "a status" if field == "status" else "true or false"
            problems.append({"field": f"assume.{name}", "message": f"{kind}"})
            continue
        found.setdefault(match.group(1), {})[field] = value
    if problems:
        raise ValidationFailed("the assumptions are not valid", details=problems)
    return found, count


@router.post("/{key}/test", response_model=WorkflowTestOut)
async def test(caller: Reader, key: NamePath, body: WorkflowTestIn) -> JSONResponse:
    """Run a workflow on paper: the path a run would take for this recipient and data,
    each step's rendered content, and how the run would end. Nothing is stored or sent.

    `assume` says what expressions read of earlier steps (`steps.feed.read`,
    `steps.alert.status`); otherwise a channel step counts as sent and not seen, a throttle
    as passed. A digest step is taken as the first trigger of its window, which closes with
    `digest.count` 1 (or `assume`'s `digest.count`) and this data as each of its events."""
    if body.recipient_id is not None and body.recipient is not None:
        raise ValidationFailed("give recipient_id or recipient, not both")
    found = await WORKFLOWS.get(caller.engine, caller.tenant_id, key, body.version)
    if found is None:
        what = f"version {body.version} of workflow" if body.version else "workflow"
        raise NotFound(f"no {what} {key!r}")
    workflow = Workflow.stored(found["name"], found["category"], found["steps"])
    assume, count = _assumptions(workflow, body.assume)
    cap = caller.ctx.settings.workflow_digest_max_events
    digest = {"count": count, "events": [body.data] * min(count, cap)}
    if body.recipient is not None:
        recipient: dict[str, Any] = {"id": "test", **body.recipient.model_dump(mode="json")}
    else:
        recipient = await _recipient(caller, body.recipient_id)
    versions = {
        name: stored
        for name in sorted(workflow.templates())
        if (stored := await template_store.get(caller.engine, caller.tenant_id, name)) is not None
    }
    compiled = {
        name: compile_stored(stored["category"], stored["channels"], stored["locales"])
        for name, stored in versions.items()
    }
    look = await look_of(
        caller.engine, caller.tenant_id, *(version.layout for version in compiled.values())
    )
    context = render_context({"data": body.data}, recipient, look.brand)

    def render(template: str, channel: str, carried: dict[str, Any] | None) -> Any:
        version = compiled.get(template)
        if version is None:
            return {"error": f"no template named {template!r}"}
        if channel not in version.channels:
            return {"error": f"the template has no {channel!r} part: nothing is sent"}
        locale, timezone = recipient.get("locale"), recipient.get("timezone")
        _, part = version.for_channel(channel, locale)
        variables = context if carried is None else {**context, "digest": carried}
        try:
            content = part.render(variables, locale=locale, timezone=timezone)
            return look.dress(channel, version.layout, content, variables, locale, timezone)
        except TemplateError as exc:
            return {"error": exc.message}

    ends, path = on_paper(workflow, body.data, recipient, assume, render, utcnow(), digest)
    return JSONResponse({"key": key, "version": found["version"], "ends": ends, "steps": path})
