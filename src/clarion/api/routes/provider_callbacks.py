"""``/v1/providers/{name}/callbacks``: delivery reports that providers send back.

No API key comes with a report: it is authentic when the provider's kind verifies it
against the provider's configuration (``Kind.reports``). Twilio POSTs a message's status
changes to the ``StatusCallback`` URL given when it was sent, signed in its
``X-Twilio-Signature`` with the account's auth token over the URL Twilio called and the
parameters. The URL is rebuilt from ``CLARION_PUBLIC_URL`` (what the provider was told to
call), never from the request's Host header.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, Response

from clarion.errors import ApiError, Forbidden, NotFound, ProviderError, Unavailable
from clarion.pipeline.status_events import StatusEvents
from clarion.providers.base import Report, ReportRefused
from clarion.providers.kinds import KINDS
from clarion.store import deliveries as store

router = APIRouter(prefix="/v1/providers", tags=["providers"])

Id = Annotated[str, Query(min_length=1, max_length=200)]
Name = Annotated[str, Path(min_length=1, max_length=100)]
FORM = "application/x-www-form-urlencoded"
MAX_PARAMS = 200


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


@router.post(
    "/{name}/callbacks",
    status_code=204,
    responses={403: {"description": "the signature is missing or wrong"}},
)
async def provider_callback(request: Request, name: Name, tenant: Id, delivery: Id) -> Response:
    """Delivery status reports from a provider (Twilio status callbacks).

    Records a signed Twilio status report: ``delivered`` marks the delivery delivered,
    ``failed``/``undelivered`` marks it failed (``provider_rejected``); other statuses change
    nothing. Only a sent delivery changes. Answers 204."""
    spec = await request.app.state.ctx.providers.spec(tenant, name)
    kind = KINDS.get(spec.kind) if spec is not None else None
    reader = kind.report_reader() if kind is not None else None
    if spec is None or reader is None:
        raise NotFound(f"no provider named {name!r}")
    params = await _form(request)
    url = request.app.state.ctx.settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    try:
        report = reader(spec.config, url, params, request.headers)
    except ReportRefused as exc:
        raise Forbidden(str(exc), code="invalid_signature") from exc
    except ProviderError as exc:
        raise Unavailable(exc.message) from exc
    if report is not None:
        await _record(request, tenant, delivery, report)
    return Response(status_code=204)


async def _form(request: Request) -> list[tuple[str, str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise UnsupportedMediaType(f"a status callback is sent as {FORM}")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError as exc:
        raise Forbidden("the request is not a status callback") from exc


async def _record(request: Request, tenant: str, delivery: str, report: Report) -> None:
    ctx = request.app.state.ctx
    changed = await store.apply_provider_report(
        ctx.engine, tenant, delivery, report.status, reason=report.reason, last_error=report.error
    )
    if changed:
        await StatusEvents(ctx).emit_report(tenant, delivery, report.status)
