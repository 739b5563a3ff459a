"""``/metrics``: the process's Prometheus metrics (observability/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from clarion.observability.scrape import CONTENT_TYPE, Sources, exposition

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
async def metrics(request: Request) -> Response:
    sources: Sources = request.app.state.metrics_sources
    return Response(await exposition(sources), media_type=CONTENT_TYPE)
