"""``/v1/sandbox/messages``: what the sandbox provider captured, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from clarion.api.auth import Reader
from clarion.api.listing import ShortKeyCursor, Size, by, page
from clarion.api.outputs import SandboxPage
from clarion.api.responses import JSONResponse
from clarion.domain.models import Channel
from clarion.store import messages as store

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"])


@router.get("/messages", response_model=SandboxPage)
async def list_messages(
    caller: Reader,
    channel: Channel | None = None,
    recipient_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Size = 50,
    cursor: ShortKeyCursor = None,
) -> JSONResponse:
    """Messages captured by the sandbox provider."""
    rows = await store.list_sandbox_messages(
        caller.engine,
        caller.tenant_id,
        channel=channel.value if channel else None,
        recipient_id=recipient_id,
        before=cursor,
        limit=limit + 1,
    )
    return JSONResponse(page(rows, limit, by("id")))
