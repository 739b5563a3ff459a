"""``GET /v1/stats``: what the console's dashboard shows (an extension of the published
API): deliveries accepted, sent and failed per minute and channel over the last minutes,
latency percentiles, the dead-letter count and the providers' circuit breakers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from clarion.api.auth import Reader
from clarion.api.outputs import StatsOut
from clarion.api.responses import JSONResponse
from clarion.api.routes.provider_health import breaker_view
from clarion.store import stats as store
from clarion.store.db import utcnow

router = APIRouter(prefix="/v1/stats", tags=["operations"])


@router.get(
    "",
    description=(
        "Of the deliveries created in the last `minutes` (1 to 60), per minute and channel: "
        "`accepted` (created), `sent` (sent or delivered) and `failed` (failed or dead); p50 "
        "and p99 of the time from a delivery's creation to its sending, per channel. At most "
        f"{store.MAX_ROWS:,} of the newest deliveries are counted (`truncated` says when "
        f"more were created); `dead_letters` counts up to {store.MAX_DEAD + 1:,}."
    ),
    response_model=StatsOut,
)
async def stats(
    caller: Reader,
    minutes: Annotated[int, Query(ge=1, le=60, description="The window, in minutes")] = 60,
) -> JSONResponse:
    """Deliveries per minute and channel, latency and breaker states, lately."""
    ctx = caller.ctx
    now = utcnow()
    window = await store.window(ctx.engine, caller.tenant_id, now, minutes)
    dead = await store.dead_letters(ctx.engine, caller.tenant_id)
    breakers = await ctx.resilience.breakers.states(caller.tenant_id)
    per_minute = [
        {
            "minute": minute,
            "channel": channel,
            "accepted": counts.accepted,
            "sent": counts.sent,
            "failed": counts.failed,
        }
        for (minute, channel), counts in sorted(window.minutes.items())
    ]
    return JSONResponse(
        {
            "since": window.since,
            "until": window.until,
            "per_minute": per_minute,
            "latency_ms": store.latency(window),
            "dead_letters": dead,
            "dead_letters_capped": dead > store.MAX_DEAD,
            "breakers": [
                breaker_view(name, status, ctx.resilience.breakers.policy.window, now)
                for name, status in sorted(breakers.items())
            ],
            "truncated": window.truncated,
        }
    )
