"""``/v1/suppressions``: the tenant's email addresses that bounced hard or complained.

Email to an address on the list is not sent: its delivery ends ``suppressed`` with the
suppression's reason (``bounced``, ``complained``). Providers' reports fill the list
(``provider_feedback.py``); operators list it, take an address off it (mail goes to it
again) or put one on it; a delivery status notification (RFC 3464) from the tenant's own
return-path mailbox is handed in at ``POST /v1/suppressions/dsn``. Addresses are kept and
looked up trimmed and lower-cased (``domain/contact.py`` ``suppression_key``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field

from clarion.api.auth import Manager, Reader
from clarion.api.idempotency import idempotent
from clarion.api.listing import Cursor, Limit, cursor_of, position_of
from clarion.api.outputs import DsnResult, Suppression, SuppressionPage
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, Email
from clarion.domain.contact import suppression_key
from clarion.domain.dsn import NotADsn, read_dsn
from clarion.domain.feedback import MAX_DETAIL, SuppressionReason, SuppressionSource
from clarion.errors import ApiError, NotFound, ValidationFailed
from clarion.observability import metrics
from clarion.pipeline.feedback import record
from clarion.store import suppressions as store

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])

Address = Annotated[str, Path(min_length=3, max_length=320)]
RFC822 = "message/rfc822"


class UnsupportedMediaType(ApiError, status=415, code="unsupported_media_type"): ...


class NewSuppression(Body):
    """An address an operator puts on the list (source `operator`)."""

    email: Email
    reason: SuppressionReason
    detail: str | None = Field(default=None, max_length=MAX_DETAIL)


@router.get("", response_model=SuppressionPage)
async def list_suppressions(
    caller: Reader,
    email: Annotated[str | None, Query(min_length=3, max_length=320)] = None,
    reason: SuppressionReason | None = None,
    channel: Annotated[
        Literal["email"] | None, Query(description="Only `email` has a suppression list")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JSONResponse:
    """The suppression list, newest first.

    `email` finds one address (as the list keeps it: trimmed and lower-cased); `reason`
    is `bounced` or `complained`."""
    filters = store.SuppressionFilter(
        caller.tenant_id,
        address=suppression_key(email) if email is not None else None,
        reason=reason.value if reason is not None else None,
    )
    rows, following = await store.list_page(caller.ctx.engine, filters, position_of(cursor), limit)
    return JSONResponse({"data": rows, "next_cursor": cursor_of(following) if following else None})


@router.post("", status_code=201, response_model=Suppression)
async def add_suppression(request: Request, caller: Manager, body: NewSuppression) -> JSONResponse:
    """Put an address on the suppression list.

    Email to it is then suppressed with the given reason; the source is `operator`. An
    address already on the list takes the new reason. Audited."""

    async def handler() -> tuple[int, object]:
        entry = store.Entry(
            suppression_key(body.email),
            body.reason.value,
            SuppressionSource.OPERATOR.value,
            body.detail,
        )
        [row] = await store.add(caller.ctx.engine, caller.tenant_id, [entry], actor=caller.key_id)
        metrics.suppressions_added(row["reason"], SuppressionSource.OPERATOR.value)
        return 201, row

    return await idempotent(
        request, caller.tenant_id, "suppressions.add", body.model_dump(mode="json"), handler
    )


@router.get("/{email}", response_model=Suppression)
async def get_suppression(caller: Reader, email: Address) -> JSONResponse:
    """One address on the suppression list."""
    row = await store.get(caller.ctx.engine, caller.tenant_id, suppression_key(email))
    if row is None:
        raise NotFound(f"{email!r} is not on the suppression list")
    return JSONResponse(row)


@router.delete("/{email}", status_code=204)
async def delete_suppression(caller: Manager, email: Address) -> Response:
    """Take an address off the suppression list.

    Email to it goes out again, from the next send on. Audited."""
    removed = await store.remove(
        caller.ctx.engine, caller.tenant_id, suppression_key(email), actor=caller.key_id
    )
    if not removed:
        raise NotFound(f"{email!r} is not on the suppression list")
    return Response(status_code=204)


@router.post(
    "/dsn",
    response_model=DsnResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {RFC822: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={415: {"description": "the body is not sent as message/rfc822"}},
)
async def hand_in_dsn(request: Request, caller: Manager) -> JSONResponse:
    """Hand in a bounce message (an RFC 3464 delivery status notification).

    The raw message as the return-path mailbox received it, `Content-Type:
    message/rfc822` (e.g. piped from the MTA). Each recipient it reports `failed` with a
    5.x.x status is suppressed (`bounced`, source `dsn`), and the delivery named by the
    returned message's `X-Clarion-Delivery-Id` header is marked `failed` (`bounced`); a
    4.x.x status or `delayed` is counted only. A message that is not a DSN is a 422
    `not_a_dsn`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != RFC822:
        raise UnsupportedMediaType(f"a DSN is sent as {RFC822}")
    try:
        reports = read_dsn(await request.body())
    except NotADsn as exc:
        raise ValidationFailed(str(exc), code="not_a_dsn") from exc
    done = await record(caller.ctx, caller.tenant_id, SuppressionSource.DSN.value, reports)
    return JSONResponse(
        {"reported": done.reports, "suppressed": done.suppressed, "bounced": done.bounced}
    )
