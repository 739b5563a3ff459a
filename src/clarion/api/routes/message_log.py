"""The message log: ``GET /v1/notifications``, ``GET /v1/deliveries`` and
``GET /v1/deliveries/{id}`` with its timeline (scope ``read``)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from clarion.api.auth import Principal, require
from clarion.api.outputs import DeliveryDetail, DeliveryPage, NotificationPage
from clarion.api.responses import JSONResponse
from clarion.api.schemas import utc_timestamp
from clarion.domain.models import Channel, DeliveryStatus, NotificationStatus
from clarion.errors import NotFound, ValidationFailed
from clarion.store import message_log as store

router = APIRouter(tags=["message log"])
Reader = Annotated[Principal, Depends(require("read"))]

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (at most 500)")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]
Text = Annotated[str | None, Query(min_length=1, max_length=200)]
After = Annotated[datetime | None, Query(description="Only those created at or after (RFC 3339)")]
Before = Annotated[datetime | None, Query(description="Only those created before (RFC 3339)")]
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


def encode_cursor(row: dict[str, object]) -> str:
    created = row["created_at"]
    assert isinstance(created, datetime)
    raw = f"{created.isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> store.Position | None:
    """The position a cursor names; 422 ``invalid_cursor`` for one this API did not make."""
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        moment = utc_timestamp(datetime.fromisoformat(stamp))
        if not _ID.match(ident):
            raise ValueError("no id")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(
            "the cursor is not one this list returned",
            code="invalid_cursor",
            details=[{"field": "cursor", "message": "not a cursor from this list"}],
        ) from exc
    return store.Position(moment, ident)


def time_range(
    after: datetime | None,
    before: datetime | None,
    names: tuple[str, str] = ("created_after", "created_before"),
) -> store.TimeRange:
    """The range between two query parameters (named ``names`` in errors)."""
    low_name, high_name = names
    bounds: dict[str, datetime | None] = {}
    for name, value in ((low_name, after), (high_name, before)):
        try:
            bounds[name] = None if value is None else utc_timestamp(value)
        except ValueError as exc:
            raise ValidationFailed(
                f"{name}: {exc}", details=[{"field": name, "message": str(exc)}]
            ) from exc
    low, high = bounds[low_name], bounds[high_name]
    if low is not None and high is not None and low >= high:
        raise ValidationFailed(
            f"{low_name} must be earlier than {high_name}",
            details=[{"field": low_name, "message": f"not earlier than {high_name}"}],
        )
    return store.TimeRange(low, high)


def _page(rows: list[dict[str, object]], limit: int) -> dict[str, object]:
    following = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return {"data": rows[:limit], "next_cursor": following}


@router.get(
    "/v1/notifications",
    summary="The message log: notifications, newest first",
    response_model=NotificationPage,
)
async def list_notifications(
    request: Request,
    principal: Reader,
    status: NotificationStatus | None = None,
    template: Text = None,
    recipient_id: Text = None,
    category: Text = None,
    created_after: After = None,
    created_before: Before = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JSONResponse:
    """Each item carries `totals` (deliveries per status) and the aggregate `status`;
    `recipient_id` matches notifications with a delivery planned for that recipient,
    `category` those whose template is (or was) of that category."""
    where = store.NotificationFilter(
        status=status.value if status else None,
        template=template,
        recipient_id=recipient_id,
        category=category,
        created=time_range(created_after, created_before),
    )
    rows = await store.list_notifications(
        request.app.state.ctx.engine, principal.tenant_id, where, decode_cursor(cursor), limit + 1
    )
    return JSONResponse(_page(rows, limit))


@router.get(
    "/v1/deliveries",
    summary="The message log: deliveries across notifications, newest first",
    response_model=DeliveryPage,
)
async def list_deliveries(
    request: Request,
    principal: Reader,
    status: DeliveryStatus | None = None,
    channel: Channel | None = None,
    provider: Text = None,
    reason: Text = None,
    recipient_id: Text = None,
    notification_id: Text = None,
    template: Text = None,
    category: Text = None,
    created_after: After = None,
    created_before: Before = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JSONResponse:
    where = store.DeliveryFilter(
        status=status.value if status else None,
        channel=channel.value if channel else None,
        provider=provider,
        reason=reason,
        recipient_id=recipient_id,
        notification_id=notification_id,
        template=template,
        category=category,
        created=time_range(created_after, created_before),
    )
    rows = await store.list_deliveries(
        request.app.state.ctx.engine, principal.tenant_id, where, decode_cursor(cursor), limit + 1
    )
    return JSONResponse(_page(rows, limit))


@router.get(
    "/v1/deliveries/{delivery_id}",
    summary="One delivery with its timeline",
    response_model=DeliveryDetail,
)
async def get_delivery(request: Request, principal: Reader, delivery_id: str) -> JSONResponse:
    found = await store.get_delivery(request.app.state.ctx.engine, principal.tenant_id, delivery_id)
    if found is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    return JSONResponse(found)
