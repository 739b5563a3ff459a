"""``/v1/webhooks``: where a tenant's delivery status events are POSTed.

Each event is signed with the webhook's own secret (``Clarion-Signature``). The secret is
stored encrypted and shown as ``"***"``; one made by Clarion (a ``PUT`` without a secret
for a new webhook) is shown once, in that response.
"""

from __future__ import annotations

import ipaddress
import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter
from pydantic import Field, field_validator

from clarion.api.auth import Manager
from clarion.api.named_routes import NamedRoutes
from clarion.api.outputs import WebhookOut, WebhookPage
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, ShortNamePath
from clarion.errors import ValidationFailed
from clarion.pipeline.context import Context
from clarion.pipeline.subscriptions import ALL_EVENTS, EVENT_TYPES
from clarion.security.netguard import is_public
from clarion.security.secrets import MASK
from clarion.store import webhooks as store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ROUTES = NamedRoutes(store.NAMED, "webhook", lambda ctx: ctx.webhooks, reads="manage")

CHOICES = (*EVENT_TYPES, ALL_EVENTS)


class WebhookBody(Body):
    url: str = Field(min_length=1, max_length=2000)
    events: list[str] = Field(min_length=1, max_length=len(CHOICES))
    secret: str | None = Field(
        default=None,
        min_length=len(MASK),
        max_length=200,
        description='16 to 200 characters; `"***"` or none keeps the stored one',
    )
    enabled: bool = True

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in CHOICES]
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r}; choose from {', '.join(CHOICES)}")
        return list(dict.fromkeys(value))

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: str | None) -> str | None:
        if value is not None and value != MASK and len(value) < 16:
            raise ValueError("a secret has at least 16 characters")
        return value


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def _check_url(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise _field_error("url", f"the URL must be {' or '.join(schemes)}")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise _field_error("url", "the URL is not valid") from exc
    if not host:
        raise _field_error("url", "the URL has no host")
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: resolved and checked when events are sent
    if not is_public(str(literal)):
        raise _field_error("url", "the URL's address is not public")


async def _secret_of(
    ctx: Context, tenant_id: str, name: str, sent: str | None
) -> tuple[str | None, str | None, bool]:
    """(a new secret to store, the sealed one to keep, whether the new one was made here)."""
    if sent is not None and sent != MASK:
        return sent, None, False
    stored = await store.get(ctx.engine, tenant_id, name)
    if stored is not None:
        return None, stored.secret, False
    if sent == MASK:
        raise _field_error("secret", 'no stored secret to keep: send the value, not "***"')
    return "whsec_" + secrets.token_urlsafe(32), None, True


@router.put(
    "/{name}",
    description=(
        "Events: " + ", ".join(f"`{e}`" for e in CHOICES) + " (every type). The URL must be "
        "https (http too when the deployment allows private webhooks). Without a secret, a "
        "new webhook gets one made by Clarion, shown only in this response; an existing one "
        'keeps its secret (so does `"***"`).'
    ),
    response_model=WebhookOut,
)
async def put(caller: Manager, name: ShortNamePath, body: WebhookBody) -> JSONResponse:
    """Create or replace a status webhook."""
    ctx = caller.ctx
    _check_url(body.url, ctx.settings.allow_private_webhooks)
    secret, sealed, made = await _secret_of(ctx, caller.tenant_id, name, body.secret)
    hook = store.WebhookIn(
        tenant_id=caller.tenant_id,
        name=name,
        url=body.url,
        events=body.events,
        enabled=body.enabled,
        secret=secret,
        sealed=sealed,
    )
    row = await store.put(ctx.engine, ctx.keyring, hook, actor=caller.key_id)
    ROUTES.changed(caller)
    return JSONResponse(row.public(secret if made and secret else MASK))


ROUTES.declare(
    router,
    __name__,
    WebhookOut,
    WebhookPage,
    one="A status webhook (its secret shown as ***)",
    listed="The tenant's status webhooks, by name",
    deleted="Delete a status webhook",
)
