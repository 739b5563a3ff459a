"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request

from clarion.api.errors import error_response
from clarion.api.outputs import Health, Ready
from clarion.api.responses import JSONResponse
from clarion.store.db import ping

router = APIRouter(tags=["operations"])
_CHECK_TIMEOUT = 3.0


@router.get("/healthz", response_model=Health)
async def healthz() -> JSONResponse:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Ready)
async def readyz(request: Request) -> JSONResponse:
    """The database, the broker and the shared-state Redis answer.

    ``checks`` names each component: ``ok``, or ``unavailable (server): Error``. With a Redis for
    rate limits, breakers and live inbox events (one client for the three), each of those is a
    check of its own; live inbox events on NATS (the NATS broker) are checked on the hub's
    own connection."""
    ctx = request.app.state.ctx
    checks: dict[str, str] = {}
    checks["database"] = await _check(ping(ctx.engine), ctx.engine.dialect.name)
    scheme = ctx.settings.broker_url.partition(":")[0]
    # redis, rediss and their +cluster forms (a Redis Cluster) are all Redis; tls:// is NATS.
    base = scheme.partition("+")[0]
    broker = "redis" if base in ("redis", "rediss", "unix") else "nats" if base == "tls" else scheme
    checks["broker"] = await _check(ctx.broker.ping(), broker)
    redis = ctx.resilience.redis
    hub = ctx.settings.live_hub
    if redis is not None:
        shared = await _check(redis.ping(), "redis")
        checks["rate_limiter"] = checks["circuit_breakers"] = shared
        if hub == "redis":
            checks["realtime_hub"] = shared
    if hub == "nats":
        checks["realtime_hub"] = await _check(ctx.hub.ping(), "nats")
    failed = [name.replace("_", " ") for name, value in checks.items() if value != "ok"]
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks})
    message = f"not ready: {', '.join(failed)} unavailable"
    return error_response(503, "unavailable", message, [checks], headers={"Retry-After": "5"})


async def _check(probe: Awaitable[Any], server: str) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            await probe
    except Exception as exc:
        return f"unavailable ({server}): {type(exc).__name__}"
    return "ok"
