"""``/v1/providers/{name}/callbacks``: delivery reports that providers send back.

No API key comes with a report: it is authentic when the provider's kind verifies it
against the provider's configuration (``Kind.reports``). Twilio POSTs a message's status
changes to the ``StatusCallback`` URL given when it was sent, signed in its
``X-Twilio-Signature`` with the account's auth token over the URL Twilio called and the
parameters. The URL is rebuilt from ``CLARION_PUBLIC_URL`` (what the provider was told to
call), never from the request's Host header.

Meta's WhatsApp webhook is one URL for every message of the app (``?tenant=`` only): its
JSON body, signed in ``X-Hub-Signature-256`` with the app secret, names each message's
delivery itself; Meta verifies the URL first with a GET handshake (``Kind.handshake``).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, Response

from clarion.errors import (
    ApiError,
    Forbidden,
    NotFound,
    ProviderError,
    Unavailable,
    ValidationFailed,
)
from clarion.observability import metrics
from clarion.pipeline.status_events import StatusEvents
from clarion.providers.base import READ, ProviderSpec, Report, ReportRefused
from clarion.providers.kinds import KINDS, Kind
from clarion.store import deliveries as store

router = APIRouter(prefix="/v1/providers", tags=["providers"])

Id = Annotated[str, Query(min_length=1, max_length=200)]
MaybeId = Annotated[str | None, Query(min_length=1, max_length=200)]
Name = Annotated[str, Path(min_length=1, max_length=100)]
Hub = Annotated[str | None, Query(max_length=500)]
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_PARAMS = 200


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


async def _provider(request: Request, tenant: str, name: str) -> tuple[ProviderSpec, Kind]:
    spec = await request.app.state.ctx.providers.spec(tenant, name)
    kind = KINDS.get(spec.kind) if spec is not None else None
    if spec is None or kind is None or kind.reports is None:
        raise NotFound(f"no provider named {name!r}")
    return spec, kind


@router.post(
    "/{name}/callbacks",
    status_code=204,
    responses={
        200: {"description": "a webhook's reports were taken (Meta's WhatsApp webhook)"},
        403: {"description": "the signature is missing or wrong"},
    },
)
async def provider_callback(
    request: Request, name: Name, tenant: Id, delivery: MaybeId = None
) -> Response:
    """Delivery status reports from a provider: Twilio status callbacks (SMS and WhatsApp;
    ``delivery`` names the delivery) and Meta's WhatsApp webhooks (each status names its
    delivery).

    Records a signed report: ``delivered`` marks the delivery delivered, ``read`` adds a
    ``read`` event to its timeline (marking it delivered if it was not yet), a failure marks
    it failed (``provider_rejected``, or the reason the service's error code gives); other
    statuses change nothing. Only a sent delivery changes. Answers 204 (Meta's webhook: 200,
    which it waits for)."""
    spec, kind = await _provider(request, tenant, name)
    try:
        if kind.report_format == "json":
            reports = await _json_reports(request, kind, spec)
        else:
            reports = await _form_reports(request, kind, spec, delivery)
    except ReportRefused as exc:
        metrics.provider_report(spec.channel, spec.kind, "refused")
        raise Forbidden(str(exc), code="invalid_signature") from exc
    except ProviderError as exc:
        raise Unavailable(exc.message) from exc
    for report in reports:
        metrics.provider_report(spec.channel, spec.kind, report.status)
        await _record(request, tenant, report.delivery_id or delivery or "", report)
    return Response(status_code=200 if kind.report_format == "json" else 204)


@router.get(
    "/{name}/callbacks",
    response_class=Response,
    responses={
        200: {"description": "the challenge, as text", "content": {"text/plain": {}}},
        403: {"description": "the verify token is wrong, or the mode not `subscribe`"},
    },
)
async def verify_callback(
    request: Request,
    name: Name,
    tenant: Id,
    mode: Annotated[Hub, Query(alias="hub.mode")] = None,
    verify_token: Annotated[Hub, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[Hub, Query(alias="hub.challenge")] = None,
) -> Response:
    """The verification of a webhook URL by its service (Meta's WhatsApp webhook: a GET
    with ``hub.mode=subscribe``, the provider's ``verify_token`` and a challenge, answered
    with the challenge)."""
    spec, kind = await _provider(request, tenant, name)
    check = kind.subscription_check()
    if check is None:
        raise NotFound(f"provider {name!r} has no webhook to verify")
    query = {"hub.mode": mode, "hub.verify_token": verify_token, "hub.challenge": challenge}
    try:
        answer = check(spec.config, {k: v for k, v in query.items() if v is not None})
    except ReportRefused as exc:
        raise Forbidden(str(exc), code="invalid_verify_token") from exc
    except ProviderError as exc:
        raise Unavailable(exc.message) from exc
    return Response(answer, media_type="text/plain")


async def _form_reports(
    request: Request, kind: Kind, spec: ProviderSpec, delivery: str | None
) -> list[Report]:
    reader = kind.report_reader()
    if reader is None:
        raise NotFound("the provider takes no form reports")
    if delivery is None:
        raise ValidationFailed(
            "a status callback names its delivery",
            details=[{"field": "delivery", "message": "required"}],
        )
    params = await _form(request)
    url = request.app.state.ctx.settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    report = reader(spec.config, url, params, request.headers)
    return [] if report is None else [report]


async def _json_reports(request: Request, kind: Kind, spec: ProviderSpec) -> list[Report]:
    reader = kind.json_report_reader()
    if reader is None:
        raise NotFound("the provider takes no webhook reports")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise UnsupportedMediaType(f"a webhook is sent as {JSON}")
    return list(reader(spec.config, await request.body(), request.headers))


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
    ctx: Any = request.app.state.ctx
    if report.status == READ:
        delivered, _ = await store.apply_read_report(
            ctx.engine, tenant, delivery, message_id=report.message_id
        )
        changed, status = delivered, "delivered"
    else:
        changed = await store.apply_provider_report(
            ctx.engine,
            tenant,
            delivery,
            report.status,
            reason=report.reason,
            last_error=report.error,
            message_id=report.message_id,
        )
        status = report.status
    if changed:
        await StatusEvents(ctx).emit_report(tenant, delivery, status)
