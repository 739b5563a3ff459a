"""``/v1/providers/{name}/feedback``: bounces and complaints that email providers report.

As with delivery reports (``provider_callbacks.py``), no API key comes with a report: the
URL names the tenant and its provider, and the report is authentic when the provider's
kind verifies it against that provider's configuration (``Kind.feedback``): Amazon SES
notifications arrive through SNS, signed with SNS's certificate and from one of the
provider's ``feedback_topic_arns``; SendGrid's event webhook signs each batch with ECDSA,
checked with the provider's ``webhook_public_key``. A report that is not authentic (no
signature, a wrong one, a certificate from another host, a stale timestamp, another
topic) is a 403 and records nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from clarion.errors import Forbidden, NotFound, ProviderError, Unavailable
from clarion.pipeline.feedback import record
from clarion.providers.base import ReportRefused
from clarion.providers.kinds import KINDS

router = APIRouter(prefix="/v1/providers", tags=["providers"])

Id = Annotated[str, Query(min_length=1, max_length=200)]
Name = Annotated[str, Path(min_length=1, max_length=100)]


@router.post(
    "/{name}/feedback",
    status_code=204,
    responses={
        403: {"description": "the report is not authentic (signature, certificate, topic, age)"},
        503: {"description": "the report cannot be checked now (the provider retries)"},
    },
)
async def provider_feedback(request: Request, name: Name, tenant: Id) -> Response:
    """Bounce and complaint reports from an email provider (SES through SNS, SendGrid).

    A hard bounce or a complaint puts the address on the tenant's suppression list, and a
    hard bounce that names its delivery marks it `failed` (`bounced`); a soft bounce is
    counted and logged. An SNS `SubscriptionConfirmation` from a configured topic is
    confirmed. Answers 204."""
    ctx = request.app.state.ctx
    spec = await ctx.providers.spec(tenant, name)
    kind = KINDS.get(spec.kind) if spec is not None else None
    reader = kind.feedback_reader() if kind is not None else None
    if spec is None or reader is None:
        raise NotFound(f"no provider named {name!r} that reports bounces")
    body = await request.body()
    try:
        reports = await reader(spec.config, body, request.headers, ctx.feedback)
    except ReportRefused as exc:
        raise Forbidden(str(exc), code="invalid_signature") from exc
    except ProviderError as exc:
        raise Unavailable(exc.message) from exc
    if reports:
        await record(ctx, tenant, spec.kind, reports)
    return Response(status_code=204)
