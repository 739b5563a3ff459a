"""The message log: ``GET /v1/notifications``, ``GET /v1/deliveries`` and
``GET /v1/deliveries/{id}`` with its timeline (scope ``read``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from clarion.api.auth import Reader
from clarion.api.listing import Newest, cursor_of, time_range
from clarion.api.outputs import DeliveryDetail, DeliveryPage, NotificationPage
from clarion.api.responses import JSONResponse, one_row
from clarion.domain.models import Channel, DeliveryStatus, NotificationStatus
from clarion.store import message_log as store

router = APIRouter(tags=["message log"])

Text = Annotated[str | None, Field(min_length=1, max_length=200)]
After = Annotated[datetime | None, Query(description="Only those created at or after (RFC 3339)")]
Before = Annotated[datetime | None, Query(description="Only those created before (RFC 3339)")]


async def created(created_after: After = None, created_before: Before = None) -> store.TimeRange:
    return store.TimeRange(*time_range(created_after, created_before))


# When the rows listed were created (a dependency: the API document lists its parameters
# after the list's own filters). The dependencies here are coroutines, which FastAPI runs
# on the event loop rather than in a thread.
Created = Annotated[store.TimeRange, Depends(created)]


class NotificationQuery(BaseModel):
    """The notification list's filters (query parameters)."""

    status: NotificationStatus | None = None
    template: Text = None
    recipient_id: Text = None
    category: Text = None


class DeliveryQuery(BaseModel):
    """The delivery list's filters (query parameters)."""

    status: DeliveryStatus | None = None
    channel: Channel | None = None
    provider: Text = None
    reason: Text = None
    recipient_id: Text = None
    notification_id: Text = None
    template: Text = None
    category: Text = None
    event: Literal["opened", "clicked"] | None = Field(
        None, description="Only deliveries with at least one event of this type (docs/tracking.md)"
    )


@router.get("/v1/notifications", response_model=NotificationPage)
async def list_notifications(
    caller: Reader, query: Annotated[NotificationQuery, Query()], created: Created, at: Newest
) -> JSONResponse:
    """The message log: notifications, newest first.

    Each item carries `totals` (deliveries per status) and the aggregate `status`; `recipient_id`
    matches notifications with a delivery planned for that recipient, `category` those whose
    template is (or was) of that category."""
    where = store.NotificationFilter(**query.model_dump(mode="json"), created=created)
    rows = await store.list_notifications(
        caller.engine, caller.tenant_id, where, at.position, at.read
    )
    return JSONResponse(at.page(rows))


@router.get("/v1/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    caller: Reader, query: Annotated[DeliveryQuery, Query()], created: Created, at: Newest
) -> JSONResponse:
    """The message log: deliveries across notifications, newest first.

    Filtered by `status`, `channel`, `provider`, `reason`, `category`, `template` or
    `event`, a page examines a bounded number of deliveries: it may hold fewer than `limit`
    items, even none, while `next_cursor` is set; follow `next_cursor` until it is null."""
    where = store.DeliveryFilter(**query.model_dump(mode="json"), created=created)
    rows, following = await store.list_deliveries(
        caller.engine, caller.tenant_id, where, at.position, at.size
    )
    return JSONResponse({"data": rows, "next_cursor": cursor_of(following) if following else None})


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryDetail)
async def get_delivery(caller: Reader, delivery_id: str) -> JSONResponse:
    """One delivery with its timeline."""
    return await one_row(caller, store.get_delivery, delivery_id, "delivery")
