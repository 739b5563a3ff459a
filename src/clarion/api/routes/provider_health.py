"""``/v1/health/providers``: the circuit breakers of the caller's providers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter

from clarion.api.auth import Reader
from clarion.api.outputs import ProviderHealth
from clarion.api.responses import JSONResponse
from clarion.resilience.breaker import CLOSED, BreakerStatus

router = APIRouter(prefix="/v1/health", tags=["providers"])


@router.get("/providers", response_model=ProviderHealth)
async def provider_health(caller: Reader) -> JSONResponse:
    """Circuit breaker state of each provider that sent lately.

    Each provider of the tenant that has been called: ``state`` is ``closed``, ``open`` or
    ``half_open``. Closed: ``calls``, ``failures`` and ``failure_rate`` cover the breaker's
    rolling window (``window_seconds``); open or half-open: they are the figures that opened it,
    at ``opened_at``. ``retry_in`` is the seconds until an open breaker lets a probe through, at
    ``next_probe_at``."""
    ctx = caller.ctx
    breakers = ctx.resilience.breakers
    states = await breakers.states(caller.tenant_id)
    now = datetime.now(UTC)
    window = breakers.policy.window
    data = [breaker_view(name, status, window, now) for name, status in sorted(states.items())]
    return JSONResponse({"data": data})


def breaker_view(name: str, status: BreakerStatus, window: float, now: datetime) -> dict[str, Any]:
    """A breaker as the API shows it (here and in ``/v1/stats``)."""
    closed = status.state == CLOSED
    opened_at = status.opened_at
    return {
        "provider": name,
        "state": status.state,
        "failure_rate": status.failure_rate,
        "calls": status.calls,
        "failures": status.failures,
        "window_seconds": window,
        "opened_at": None if opened_at is None else datetime.fromtimestamp(opened_at, UTC),
        "next_probe_at": None if closed else now + timedelta(seconds=status.retry_in),
        "retry_in": round(status.retry_in, 3),
    }
