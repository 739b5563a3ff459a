"""``/v1/notifications``: accept, batch-accept, read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from clarion.api.auth import Reader, Sender
from clarion.api.errors import api_error_response, error_body
from clarion.api.idempotency import header_key, idempotent, request_hash
from clarion.api.limits import EdgeParsedRoute
from clarion.api.listing import IdCursor, KeyCursor, Size, by, page
from clarion.api.outputs import (
    BatchResults,
    NotificationAccepted,
    NotificationDeliveryPage,
    NotificationDetail,
    RunPage,
)
from clarion.api.quota import charge_intake, charge_intake_of
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, one_row, or_404
from clarion.api.schemas import NotificationBatchIn, NotificationIn
from clarion.domain.refusal import Refused
from clarion.errors import ApiError, NotFound
from clarion.observability import metrics
from clarion.pipeline.intake import Intake
from clarion.store import notifications as store
from clarion.store import runs as run_store

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], route_class=EdgeParsedRoute)


def _intake(request: Request) -> Intake:
    intake: Intake | None = request.app.state.intake
    if intake is None:
        raise NotFound("this process does not accept notifications")
    return intake


def to_new(tenant_id: str, item: NotificationIn, header_key: str | None) -> store.NewNotification:
    # A template send's hash is what it was before workflows: their fields are left out.
    left_out = {"idempotency_key"} | (
        {"workflow", "cancellation_key"} if item.workflow is None else set()
    )
    body = item.model_dump(mode="json", exclude=left_out)
    return store.NewNotification(
        tenant_id=tenant_id,
        template=item.template or "",
        recipient_ids=item.to.recipients(),
        data=item.data,
        priority=item.priority.value,
        channels=[c.value for c in item.channels] if item.channels else None,
        send_at=item.send_at,
        expires_at=item.expires_at,
        idempotency_key=item.idempotency_key or header_key,
        request_hash=request_hash(body),
        topic=item.to.topic,
        workflow=item.workflow,
        cancellation_key=item.cancellation_key,
    )


def _accepted(outcome: store.Accepted) -> dict[str, Any]:
    status = "scheduled" if outcome.status == "scheduled" else "accepted"
    return {"id": outcome.id, "status": status}


@router.post("", status_code=202, response_model=NotificationAccepted)
async def create(request: Request, caller: Sender, item: NotificationIn) -> JSONResponse:
    """Accept one notification."""
    # Most requests to this route are answered by api/send_one.py, in front of FastAPI,
    # through the same function; this route answers the rest (and documents it).
    return await accept_one(request.app.state, caller.tenant_id, item, header_key(request))


async def accept_one(
    state: Any, tenant_id: str, item: NotificationIn, key: str | None
) -> JSONResponse:
    """Charge the tenant's quota for one notification and store it: the 202, or the error
    answer of a refused one, with the ``RateLimit-*`` headers."""
    new = to_new(tenant_id, item, key)
    limits = await charge_intake_of(state, tenant_id, 1)
    intake: Intake | None = state.intake
    if intake is None:
        raise NotFound("this process does not accept notifications")
    [outcome] = await intake.accept([new], request=True)
    if isinstance(outcome, Refused):
        return limits.apply(api_error_response(refusal_error(outcome)))
    return limits.apply(JSONResponse(_accepted(outcome), status_code=202))


def _parse_items(
    tenant_id: str, raw: list[dict[str, Any]]
) -> tuple[list[store.NewNotification], list[int], dict[int, dict[str, Any]]]:
    news: list[store.NewNotification] = []
    positions: list[int] = []
    refused: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(raw):
        try:
            news.append(to_new(tenant_id, NotificationBatchIn.ITEMS.item(entry), None))
            positions.append(index)
        except ApiError as exc:
            refused[index] = error_body(exc.code, exc.message, exc.details)
    return news, positions, refused


@router.post("/batch", status_code=202, response_model=BatchResults)
async def create_batch(
    request: Request, caller: Sender, batch: NotificationBatchIn
) -> JSONResponse:
    """Accept up to 1,000 notifications."""
    batch.ITEMS.check_size(batch.notifications)
    intake = _intake(request)
    limits = await charge_intake(request, caller.tenant_id, len(batch.notifications))

    async def handler() -> tuple[int, Any]:
        news, positions, refused = _parse_items(caller.tenant_id, batch.notifications)
        metrics.refused_items(refused.values())
        outcomes = await intake.accept(news, request=True) if news else []
        results: list[dict[str, Any]] = [{} for _ in batch.notifications]
        for index, body in refused.items():
            results[index] = body
        for index, outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, Refused):
                results[index] = error_body(outcome.code, outcome.message, outcome.details)
            else:
                results[index] = _accepted(outcome)
        return 202, {"results": results}

    response = await idempotent(
        request, caller.tenant_id, "notifications.batch", batch.notifications, handler
    )
    return limits.apply(response)


@router.get("/{notification_id}", response_model=NotificationDetail)
async def get(caller: Reader, notification_id: str) -> JSONResponse:
    """A notification and its deliveries."""
    return await one_row(caller, store.get_with_deliveries, notification_id, "notification")


@router.get("/{notification_id}/deliveries", response_model=NotificationDeliveryPage)
async def deliveries(
    caller: Reader, notification_id: str, limit: Size = 100, cursor: IdCursor = None
) -> JSONResponse:
    """A notification's deliveries, paged."""
    rows = await store.deliveries_page(
        caller.engine, caller.tenant_id, notification_id, cursor, limit + 1
    )
    return JSONResponse(page(or_404(rows, f"no notification {notification_id!r}"), limit, by("id")))


@router.get("/{notification_id}/runs", response_model=RunPage)
async def runs(
    caller: Reader, notification_id: str, limit: Size = 100, cursor: KeyCursor = None
) -> JSONResponse:
    """A workflow send's runs, one per recipient, by recipient id (paged): where each
    stands, and each step's outcome with its deliveries."""
    if not await store.is_known(caller.engine, caller.tenant_id, notification_id):
        raise NotFound(f"no notification {notification_id!r}")
    rows = await run_store.of_notification(
        caller.engine, caller.tenant_id, notification_id, after=cursor, limit=limit + 1
    )
    return JSONResponse(page(await run_store.shown(caller.engine, rows), limit, by("recipient_id")))


@router.delete("/{notification_id}", status_code=202, response_model=NotificationDetail)
async def cancel(caller: Sender, notification_id: str) -> JSONResponse:
    """Cancel what is not sent yet.

    Deliveries still `queued` or `scheduled` are cancelled; those whose attempt was already under
    way (`sending`) may still go out. The answer counts both in `"cancel": {"cancelled",
    "in_flight"}`; the status reads `cancelling` while any is in flight, then `cancelled`."""
    if not await store.cancel(caller.engine, caller.tenant_id, notification_id):
        raise NotFound(f"no notification {notification_id!r}")
    # Counted afresh: the answer says how many were cancelled and how many were in flight.
    found = await store.get_with_deliveries(
        caller.engine, caller.tenant_id, notification_id, fresh=True
    )
    if found is None:  # erased in between
        raise NotFound(f"no notification {notification_id!r}")
    return JSONResponse(found, status_code=202)
