"""``/v1/health/providers``: the circuit breakers of the caller's providers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from clarion.api.auth import Principal, require
from clarion.api.outputs import ProviderHealth
from clarion.api.responses import JSONResponse
from clarion.pipeline.context import Context

router = APIRouter(prefix="/v1/health", tags=["providers"])
Reader = Annotated[Principal, Depends(require("read"))]


@router.get(
    "/providers",
    summary="Circuit breaker state of each provider that sent lately",
    response_model=ProviderHealth,
)
async def provider_health(request: Request, principal: Reader) -> JSONResponse:
    """Each provider of the tenant that has been called: ``state`` is ``closed``, ``open``
    or ``half_open``; ``failure_rate`` and ``calls`` cover the breaker's rolling window;
    ``retry_in`` is the seconds until an open breaker lets a probe through."""
    ctx: Context = request.app.state.ctx
    states = await ctx.resilience.breakers.states(principal.tenant_id)
    data = [
        {
            "provider": name,
            "state": status.state,
            "failure_rate": status.failure_rate,
            "calls": status.calls,
            "retry_in": round(status.retry_in, 3),
        }
        for name, status in sorted(states.items())
    ]
    return JSONResponse({"data": data})
