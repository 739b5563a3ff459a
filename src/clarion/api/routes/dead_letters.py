"""``/v1/dead-letters``: deliveries that ran out of attempts; list them, send them again.

A replayed delivery keeps its id, so the destination sees the same ``Idempotency-Key`` and
a delivery already sent is never sent twice.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import Field

from clarion.api.auth import Admin
from clarion.api.idempotency import idempotent
from clarion.api.listing import Size, aware, cursor_of, position_of
from clarion.api.outputs import DeadLetter, DeadLetterPage, ReplayResult
from clarion.api.responses import JSONResponse
from clarion.api.schemas import AwareDatetime, Body, Name
from clarion.domain.models import Channel
from clarion.errors import Conflict, NotFound
from clarion.pipeline.context import Context
from clarion.pipeline.messages import publish_deliveries
from clarion.store import dead_letters as store
from clarion.store.delivery_rows import delivery_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


class ReplayFilter(Body):
    """Which dead letters to replay; every field narrows, none means all of them."""

    channel: Channel | None = None
    provider: Name | None = None
    after: AwareDatetime | None = None
    before: AwareDatetime | None = None
    limit: int = Field(default=store.MAX_REPLAY, ge=1, le=store.MAX_REPLAY)


@router.get("", response_model=DeadLetterPage)
async def list_dead_letters(
    caller: Admin,
    channel: Channel | None = None,
    provider: Annotated[str | None, Query(max_length=200)] = None,
    after: datetime | None = None,
    before: datetime | None = None,
    limit: Size = 50,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> JSONResponse:
    """Dead deliveries, newest first. Filtered by `channel` or `provider`, each page
    examines at most 10,000 of the tenant's dead letters and shows those that match: it
    may hold fewer than `limit`, even none, while `next_cursor` is set. Only a null
    `next_cursor` ends the list."""
    filters = store.DeadFilter(
        caller.tenant_id,
        channel=channel.value if channel else None,
        provider=provider,
        after=aware("after", after),
        before=aware("before", before),
    )
    ctx = caller.ctx
    # This list answered `validation_error` to a bad cursor before `invalid_cursor` existed.
    position = position_of(cursor, code="validation_error")
    rows, following = await store.list_dead(ctx.engine, filters, position, limit)
    return JSONResponse({"data": rows, "next_cursor": cursor_of(following) if following else None})


async def _publish(ctx: Context, rows: list[dict[str, Any]]) -> None:
    """Hand requeued deliveries to their lanes. They are already `queued` in the store: if
    publishing fails the sweeper publishes them later, so the replay still stands."""
    try:
        await publish_deliveries(ctx.broker, [delivery_of(row) for row in rows])
    except Exception as exc:
        log.warning("replayed deliveries not published (the sweeper will): %r", exc)
    ctx.made_progress()


@router.post("/replay", status_code=202, response_model=ReplayResult)
async def replay_matching(
    request: Request, caller: Admin, body: ReplayFilter | None = None
) -> JSONResponse:
    """Replay the dead deliveries that match."""
    body = body or ReplayFilter()
    ctx = caller.ctx

    async def handler() -> tuple[int, Any]:
        filters = store.DeadFilter(
            caller.tenant_id,
            channel=body.channel.value if body.channel else None,
            provider=body.provider,
            after=body.after,
            before=body.before,
        )
        rows, more = await store.replay_many(ctx.engine, filters, body.limit, actor=caller.key_id)
        await _publish(ctx, rows)
        return 202, {"replayed": len(rows), "more": more}

    return await idempotent(
        request,
        caller.tenant_id,
        "dead_letters.replay",
        body.model_dump(mode="json"),
        handler,
    )


@router.post("/{delivery_id}/replay", status_code=202, response_model=DeadLetter)
async def replay_one(
    request: Request, caller: Admin, delivery_id: Annotated[str, Path(max_length=100)]
) -> JSONResponse:
    """Replay one dead delivery."""
    ctx = caller.ctx

    async def handler() -> tuple[int, Any]:
        row = await store.replay_one(ctx.engine, caller.tenant_id, delivery_id, actor=caller.key_id)
        if row is None:
            status = await store.status_of(ctx.engine, caller.tenant_id, delivery_id)
            if status is None:
                raise NotFound(f"no delivery {delivery_id!r}")
            raise Conflict(
                f"delivery {delivery_id!r} is {status}, not dead: only dead deliveries "
                "can be replayed",
                code="not_dead",
            )
        await _publish(ctx, [row])
        return 202, store.public(row)

    return await idempotent(
        request,
        caller.tenant_id,
        "dead_letters.replay_one",
        {"delivery_id": delivery_id},
        handler,
    )
