"""``/v1/providers``: a tenant's providers, their credentials encrypted at rest.

A secret field of ``config`` (a password, an API key, a private key) is stored encrypted and
shown as ``"***"``; a ``PUT`` that sends ``"***"`` for one keeps the stored value, so a
client can send back what it read. The names of the built-in providers (``sandbox``,
``webhook``, ``inapp``) are reserved.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from pydantic import Field, ValidationError

from clarion.api import provider_schemas
from clarion.api.auth import Manager
from clarion.api.errors import describe_validation
from clarion.api.named_routes import NamedRoutes
from clarion.api.outputs import ProviderOut, ProviderPage
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, ShortNamePath
from clarion.domain.models import Channel
from clarion.errors import ValidationFailed
from clarion.pipeline.context import Context
from clarion.providers.base import ProviderSpec
from clarion.providers.kinds import BUILT_IN, CONFIGURABLE, KINDS
from clarion.security.secrets import MASK, SecretError, SecretKeyMissing
from clarion.store import providers as store

router = APIRouter(prefix="/v1/providers", tags=["providers"])
ROUTES = NamedRoutes(store.NAMED, "provider", lambda ctx: ctx.providers)


class ProviderIn(Body):
    channel: Channel
    kind: str = Field(min_length=1, max_length=20, description=", ".join(sorted(CONFIGURABLE)))
    config: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=1, ge=1, le=1_000_000)
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    enabled: bool = True


def _field_error(field: str, message: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(message, code=code, details=[{"field": field, "message": message}])


def _check_kind(body: ProviderIn) -> None:
    if body.kind not in CONFIGURABLE:
        raise _field_error(
            "kind",
            f"unknown provider kind {body.kind!r}; choose from {', '.join(sorted(CONFIGURABLE))}",
            code="unknown_kind",
        )
    channels = KINDS[body.kind].channels
    if body.channel.value not in channels:
        raise _field_error(
            "channel",
            f"a {body.kind} provider carries {', '.join(sorted(channels))}, "
            f"not {body.channel.value}",
            code="channel_not_supported",
        )


async def _keep_secrets(
    ctx: Context, tenant_id: str, name: str, kind: str, config: dict[str, Any]
) -> dict[str, Any]:
    """``config`` with each secret sent as ``"***"`` replaced by the stored value."""
    masked = sorted(f for f in KINDS[kind].secret_fields if config.get(f) == MASK)
    if not masked:
        return config
    stored = await store.get(ctx.engine, tenant_id, name)
    try:
        kept = stored.open_secrets(ctx.keyring) if stored and stored.kind == kind else {}
    except SecretError as exc:
        if ctx.keyring.current is None:
            raise SecretKeyMissing() from exc
        raise _field_error(
            f"config.{masked[0]}", "the stored value cannot be decrypted; send it again"
        ) from exc
    missing = [f for f in masked if f not in kept]
    if missing:
        raise ValidationFailed(
            'no stored secret to keep: send the value, not "***"',
            details=[{"field": f"config.{f}", "message": "nothing stored"} for f in missing],
        )
    return {**config, **{f: kept[f] for f in masked}}


def _validated(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    model = KINDS[kind].config
    assert model is not None  # a configurable kind (checked by _check_kind)
    try:
        valid = model.model_validate(config)
    except ValidationError as exc:
        details = describe_validation(exc.errors())
        for detail in details:
            detail["field"] = f"config.{detail['field']}" if detail["field"] else "config"
        raise ValidationFailed("the provider's config is not valid", details=details) from exc
    values: dict[str, Any] = valid.model_dump(mode="json", by_alias=True)
    problems = KINDS[kind].check_credentials(values)
    if problems:
        raise ValidationFailed("the provider's credentials are not usable", details=problems)
    return values


def _https_destination(caller: Manager, kind: str, values: dict[str, Any]) -> None:
    """A chat kind's own webhook URL is https, or plain http where the deployment allows
    private webhooks (as a recipient's is)."""
    url = values.get("webhook_url") if KINDS[kind].destination == "webhook_url" else None
    plain = isinstance(url, str) and urlsplit(url).scheme != "https"
    if plain and not caller.ctx.settings.allow_private_webhooks:
        raise _field_error("config.webhook_url", "a webhook URL must be https")


@router.put("/{name}", response_model=ProviderOut, openapi_extra=provider_schemas.OPENAPI_EXTRA)
async def put(caller: Manager, name: ShortNamePath, body: ProviderIn) -> JSONResponse:
    """Create or replace a provider.

    Secret fields of `config` are encrypted at rest and shown as `"***"`; sending `"***"` back
    keeps the stored value. `sandbox`, `webhook` and `inapp` are the built-in providers' names
    and cannot be used. Without a secret key in the deployment, a provider with credentials is
    refused with 503 `secret_key_missing`."""
    if name in BUILT_IN:
        raise ValidationFailed(f"{name!r} is a built-in provider's name", code="reserved_name")
    _check_kind(body)
    ctx = caller.ctx
    config = await _keep_secrets(ctx, caller.tenant_id, name, body.kind, body.config)
    values = _validated(body.kind, config)
    _https_destination(caller, body.kind, values)
    spec = ProviderSpec(
        tenant_id=caller.tenant_id,
        name=name,
        kind=body.kind,
        channel=body.channel.value,
        config=values,
        priority=body.priority,
        rate_limit_per_second=body.rate_limit_per_second,
        enabled=body.enabled,
    )
    secret = KINDS[body.kind].secret_fields
    row = await store.put(ctx.engine, ctx.keyring, spec, secret, actor=caller.key_id)
    ROUTES.changed(caller)
    return JSONResponse(row.public())


ROUTES.declare(
    router,
    __name__,
    ProviderOut,
    ProviderPage,
    one="A provider (secrets shown as ***)",
    listed="The tenant's providers, by name",
    deleted="Delete a provider",
)
