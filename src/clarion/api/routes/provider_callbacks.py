"""``/v1/providers/{name}/callbacks``: delivery reports that providers send back.

Twilio POSTs a message's status changes to the ``StatusCallback`` URL given when it was
sent. No API key comes with them: a report is authentic when its ``X-Twilio-Signature`` is
the HMAC of the URL Twilio called and its parameters, keyed by the account's auth token. The
URL is rebuilt from ``CLARION_PUBLIC_URL`` (what Twilio was told to call), never from the
request's Host header.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from clarion.domain.models import DeliveryStatus
from clarion.errors import ApiError, Forbidden, NotFound, Unavailable
from clarion.pipeline.status_events import StatusEvents
from clarion.providers.base import ProviderSpec
from clarion.providers.configs import TwilioConfig
from clarion.providers.twilio import valid_signature
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
    summary="Delivery status reports from a provider (Twilio status callbacks)",
    responses={403: {"description": "the signature is missing or wrong"}},
)
async def provider_callback(request: Request, name: Name, tenant: Id, delivery: Id) -> Response:
    """Records a signed Twilio status report: ``delivered`` marks the delivery delivered,
    ``failed``/``undelivered`` marks it failed (``provider_rejected``); other statuses change
    nothing. Only a sent delivery changes. Answers 204."""
    spec = await request.app.state.ctx.providers.spec(tenant, name)
    if spec is None or spec.kind != "twilio":
        raise NotFound(f"no provider named {name!r}")
    params = await _form(request)
    url = request.app.state.ctx.settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not valid_signature(
        _auth_token(spec), url, params, request.headers.get("x-twilio-signature")
    ):
        raise Forbidden("the request signature is missing or wrong", code="invalid_signature")
    await _record(request, tenant, delivery, dict(params))
    return Response(status_code=204)


async def _form(request: Request) -> list[tuple[str, str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise UnsupportedMediaType(f"a status callback is sent as {FORM}")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError as exc:
        raise Forbidden("the request is not a Twilio status callback") from exc


def _auth_token(spec: ProviderSpec) -> str:
    try:
        return TwilioConfig.model_validate(spec.config).auth_token
    except ValidationError as exc:
        # The stored credentials cannot be read (e.g. sealed with another secret key).
        raise Unavailable("the provider's credentials are unavailable") from exc


async def _record(request: Request, tenant: str, delivery: str, params: dict[str, str]) -> None:
    status = params.get("MessageStatus", "")
    ctx = request.app.state.ctx
    if status == "delivered":
        changed = await store.apply_provider_report(
            ctx.engine, tenant, delivery, DeliveryStatus.DELIVERED
        )
        reported = DeliveryStatus.DELIVERED
    elif status in ("failed", "undelivered"):
        code = params.get("ErrorCode")
        error = f"Twilio reported {status}" + (f" (error {code})" if code else "")
        changed = await store.apply_provider_report(
            ctx.engine,
            tenant,
            delivery,
            DeliveryStatus.FAILED,
            reason="provider_rejected",
            last_error=error,
        )
        reported = DeliveryStatus.FAILED
    else:
        return
    if changed:
        await StatusEvents(ctx).emit_report(tenant, delivery, reported)
