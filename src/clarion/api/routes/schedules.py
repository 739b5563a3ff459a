"""``/v1/schedules``: recurring sends (docs/schedules.md). Another tenant's schedule, like
one that does not exist, is a 404."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Response

from clarion.api.auth import Manager, Reader
from clarion.api.listing import IdCursor, NameCursor, Size, by, page
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, deleted, one_row
from clarion.api.schedule_models import (
    ScheduleIn,
    ScheduleOut,
    SchedulePage,
    ScheduleRunPage,
)
from clarion.api.schemas import NamePath
from clarion.domain.cron import RECIPIENT, Cron, next_look
from clarion.domain.refusal import Refused
from clarion.errors import NotFound, ValidationFailed
from clarion.observability import tracing
from clarion.pipeline.context import Context
from clarion.pipeline.recurring import usable_zones
from clarion.store import notifications as notification_store
from clarion.store import schedule_runs as runs
from clarion.store import schedules as store
from clarion.store import topics as topic_store

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


async def _check_references(ctx: Context, tenant_id: str, body: ScheduleIn) -> None:
    """The template or workflow, topic and listed recipients must exist now, as for a send
    (each run checks again: a recipient erased since is left out, and a run whose template
    or workflow is gone fails)."""
    note = body.notification
    unknown = await notification_store.unknown_template_or_workflow(
        ctx.engine, tenant_id, template=note.template, workflow=note.workflow, pg=ctx.pg
    )
    if unknown is not None:
        raise refusal_error(unknown)
    topic = note.to.topic
    if topic is not None and await topic_store.size(ctx.engine, tenant_id, topic) is None:
        raise ValidationFailed(
            f"no topic named {topic!r}",
            code="unknown_topic",
            details=[{"field": "notification.to.topic", "topic": topic}],
        )
    ids = note.to.recipients()
    missing = await store.unknown_recipients(ctx.engine, tenant_id, ids) if ids else []
    if missing:
        raise ValidationFailed(
            f"no recipient with id {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            code="unknown_recipient",
            details=[{"recipient_id": rid} for rid in missing[:100]],
        )


async def _timing(
    ctx: Context, tenant_id: str, body: ScheduleIn, old: dict[str, Any] | None, now: datetime
) -> tuple[datetime, datetime | None]:
    """The new watermark and next look. A replacement that keeps the cron, zone, start and
    enabled state keeps the watermark, so a due time it has not fired yet still fires;
    any other change starts from now, so no past due time fires because of the edit."""
    same = old is not None and all(
        old[name] == getattr(body, name) for name in ("cron", "timezone", "starts_at")
    )
    fired_through = old["fired_through"] if same and old and old["enabled"] else now
    if not body.enabled:
        return fired_through, None
    if body.timezone == RECIPIENT:
        to = body.notification.to.model_dump(exclude_none=True)
        zones = usable_zones(await store.zones(ctx.engine, tenant_id, to))
        rescan: datetime | None = now + timedelta(seconds=ctx.settings.schedule_zone_rescan)
    else:
        zones, rescan = [body.timezone], None
    following = next_look(
        Cron(body.cron),
        zones,
        fired_through,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        rescan=rescan,
    )
    return fired_through, following


@router.put("/{name}", response_model=ScheduleOut)
async def put(caller: Manager, name: NamePath, body: ScheduleIn) -> JSONResponse:
    """Create or replace a recurring schedule."""
    ctx = caller.ctx
    await _check_references(ctx, caller.tenant_id, body)
    now = ctx.clock()
    old = await store.current(ctx.engine, caller.tenant_id, name)
    fired_through, following = await _timing(ctx, caller.tenant_id, body, old, now)
    values = {
        "cron": body.cron,
        "timezone": body.timezone,
        "notification": body.stored_notification(),
        "enabled": body.enabled,
        "starts_at": body.starts_at,
        "ends_at": body.ends_at,
        "fired_through": fired_through,
        "next_run_at": following,
        "updated_at": now,
        "trace": tracing.traceparent(),  # each run's span links to this request
    }
    stored = await store.put(
        ctx.engine,
        caller.tenant_id,
        name,
        values,
        actor=caller.key_id,
        most=ctx.settings.max_schedules,
    )
    if isinstance(stored, Refused):
        raise refusal_error(stored)
    found = await store.get(ctx.engine, caller.tenant_id, name)
    if found is None:  # deleted in between
        raise NotFound(f"no schedule {name!r}")
    return JSONResponse(found)


@router.get("/{name}", response_model=ScheduleOut)
async def get(caller: Reader, name: NamePath) -> JSONResponse:
    """A recurring schedule."""
    return await one_row(caller, store.get, name, "schedule")


@router.get("", response_model=SchedulePage)
async def listing(caller: Reader, limit: Size = 100, cursor: NameCursor = None) -> JSONResponse:
    """The tenant's schedules, in name order."""
    rows = await store.page(caller.engine, caller.tenant_id, cursor, limit + 1)
    return JSONResponse(page(rows, limit, by("name")))


@router.delete("/{name}", status_code=204)
async def delete(caller: Manager, name: NamePath) -> Response:
    """Delete a schedule and its run history."""
    found = await store.remove(caller.engine, caller.tenant_id, name, actor=caller.key_id)
    return deleted(found, "schedule", name)


@router.get("/{name}/runs", response_model=ScheduleRunPage)
async def history(
    caller: Reader, name: NamePath, limit: Size = 100, cursor: IdCursor = None
) -> JSONResponse:
    """A schedule's runs, newest first."""
    if await store.get(caller.engine, caller.tenant_id, name) is None:
        raise NotFound(f"no schedule {name!r}")
    rows = await runs.page(caller.engine, caller.tenant_id, name, cursor, limit + 1)
    return JSONResponse(page(rows, limit, by("id")))
