"""The operations port of a process: ``/metrics``, ``/healthz`` and ``/readyz``.

Workers and schedulers serve no API; with ``CLARION_METRICS_PORT`` set they listen there
for Prometheus and for their liveness and readiness probes (the API process answers the
same paths on its own port, and on this one too when it is set).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from clarion.api import errors
from clarion.api.routes import health
from clarion.api.routes import metrics as metrics_route
from clarion.api.server import NO_FRAMEWORK_TELEMETRY, http_server
from clarion.pipeline.scrape import Sources

if TYPE_CHECKING:
    from clarion.pipeline.context import Context


def create_ops_app(ctx: Context, sources: Sources) -> FastAPI:
    app = FastAPI(
        title="Clarion operations",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=NO_FRAMEWORK_TELEMETRY,
    )
    app.state.ctx = ctx
    app.state.metrics_sources = sources
    errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    return app


def ops_server(ctx: Context, sources: Sources) -> uvicorn.Server | None:
    """The server of the operations port, or None when ``CLARION_METRICS_PORT`` is unset."""
    settings = ctx.settings
    if settings.metrics_port is None:
        return None
    own = settings.model_copy(
        update={"http_host": settings.metrics_host, "http_port": settings.metrics_port}
    )
    return http_server(create_ops_app(ctx, sources), own)
