"""``/metrics``: the process's Prometheus metrics (observability/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from clarion.errors import NotFound
from clarion.observability import metrics as hooks
from clarion.pipeline.scrape import CONTENT_TYPE, Sources, exposition

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process."""
    if not hooks.ENABLED:
        raise NotFound("Metrics are off on this process (CLARION_METRICS=off).")
    sources: Sources = request.app.state.metrics_sources
    return Response(await exposition(sources), media_type=CONTENT_TYPE)
