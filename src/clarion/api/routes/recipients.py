"""``/v1/recipients``: create or replace, read, batch upsert, erase, export, preferences."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import Field

from clarion.api.auth import Caller, Manager, Reader, require
from clarion.api.errors import error_body
from clarion.api.idempotency import idempotent
from clarion.api.limits import EdgeParsedRoute
from clarion.api.outputs import (
    BatchResults,
    PreferencesOut,
    RecipientExport,
    RecipientOut,
    RecipientToken,
)
from clarion.api.responses import JSONResponse, one_row
from clarion.api.schemas import (
    Body,
    PreferencesIn,
    RecipientBatchIn,
    RecipientIn,
)
from clarion.errors import NotFound, ValidationFailed
from clarion.security import inbox_tokens
from clarion.store import categories as category_store
from clarion.store import erasure
from clarion.store import recipients as store

router = APIRouter(prefix="/v1/recipients", tags=["recipients"], route_class=EdgeParsedRoute)

Issuer = Annotated[Caller, Depends(require("manage", "send"))]
RecipientPath = Annotated[str, Path(min_length=1, max_length=200)]


def _checked(caller: Caller, recipient: RecipientIn) -> RecipientIn:
    """A recipient whose chat webhook URLs are https (or plain http where the deployment
    allows private webhooks); else a 422 naming them."""
    problems = [] if caller.ctx.settings.allow_private_webhooks else recipient.plain_http()
    if problems:
        raise ValidationFailed("the recipient is not valid", details=problems)
    return recipient


@router.put("/{recipient_id}", response_model=RecipientOut)
async def put(caller: Manager, recipient_id: RecipientPath, body: RecipientIn) -> JSONResponse:
    """Create or replace a recipient."""
    _checked(caller, body)
    await store.upsert_many(
        caller.engine, caller.tenant_id, [{"id": recipient_id, **body.to_row()}]
    )
    found = await store.get(caller.engine, caller.tenant_id, recipient_id)
    return JSONResponse(found)


@router.get("/{recipient_id}", response_model=RecipientOut)
async def get(caller: Reader, recipient_id: RecipientPath) -> JSONResponse:
    """A recipient."""
    return await one_row(caller, store.get, recipient_id, "recipient")


@router.post("/batch", response_model=BatchResults)
async def batch(request: Request, caller: Manager, body: RecipientBatchIn) -> JSONResponse:
    """Create or replace up to 1,000 recipients."""
    body.ITEMS.check_size(body.recipients)

    async def handler() -> tuple[int, Any]:
        results: list[dict[str, Any]] = []
        rows: dict[str, dict[str, Any]] = {}
        for entry in body.recipients:
            try:
                item = body.ITEMS.item(entry)
                _checked(caller, item)
            except ValidationFailed as exc:
                results.append(error_body(exc.code, exc.message, exc.details))
                continue
            rows[item.id] = {"id": item.id, **RecipientIn.to_row(item)}
            results.append({"id": item.id, "status": "ok"})
        if rows:
            await store.upsert_many(caller.engine, caller.tenant_id, list(rows.values()))
        return 200, {"results": results}

    return await idempotent(request, caller.tenant_id, "recipients.batch", body.recipients, handler)


@router.delete("/{recipient_id}", status_code=204)
async def erase(caller: Manager, recipient_id: RecipientPath) -> Response:
    """Erase a recipient.

    Removes the recipient's contact data, tokens, subscriptions, preferences, data, inbox and
    sandbox captures; deliveries are kept for counts but lose their address, content, errors and
    any link to the recipient's id (their own ids change too, as they derive from it). Deliveries
    still waiting become `suppressed` (`cancelled`); dead letters become `failed`. Recurring
    schedules stop listing it (one addressed to it alone is deleted). On SQLite the freed pages
    are overwritten (`secure_delete`)."""
    ctx = caller.ctx
    erased_at = await erasure.erase(ctx.engine, caller.tenant_id, recipient_id, actor=caller.key_id)
    if erased_at is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    # Here at once; other API processes when they next follow the revocations.
    await ctx.inbox.erased(caller.tenant_id, recipient_id, erased_at)
    return Response(status_code=204)


class TokenIn(Body):
    expires_in: int = Field(default=inbox_tokens.DEFAULT_TTL, ge=60, le=inbox_tokens.MAX_TTL)


@router.post("/{recipient_id}/token", response_model=RecipientToken)
async def token(
    caller: Issuer, recipient_id: RecipientPath, body: TokenIn | None = None
) -> JSONResponse:
    """A recipient token for the recipient's inbox.

    A signed token that lets an end user's browser or app read this recipient's inbox
    (`/v1/inbox`, its live stream and WebSocket) and nothing else. `expires_in` in seconds:
    86,400 by default, at most 2,592,000 (30 days). Revoked by `clarion keys rotate-inbox-secret
    TENANT` or by erasing the recipient. Needs the `manage` or `send` scope."""
    ctx = caller.ctx
    if await store.get(ctx.engine, caller.tenant_id, recipient_id) is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    ttl = (body or TokenIn()).expires_in
    issued, expires_at = await ctx.inbox.mint(caller.tenant_id, recipient_id, ttl)
    return JSONResponse({"token": issued, "expires_at": expires_at})


@router.get(
    "/{recipient_id}/export",
    description=(
        f"The recipient, its preferences, topics, open digest windows, inbox messages, "
        f"deliveries, sandbox captures and workflow runs, the newest "
        f"{erasure.EXPORT_LIMIT:,} of each list; `truncated` is true when a list was cut."
    ),
    response_model=RecipientExport,
)
async def export(caller: Reader, recipient_id: RecipientPath) -> JSONResponse:
    """Everything stored about a recipient."""
    return await one_row(caller, erasure.export, recipient_id, "recipient")


@router.get("/{recipient_id}/preferences", response_model=PreferencesOut)
async def get_preferences(caller: Reader, recipient_id: RecipientPath) -> JSONResponse:
    """A recipient's preferences."""
    return await one_row(caller, store.get_preferences, recipient_id, "recipient")


@router.put("/{recipient_id}/preferences", response_model=PreferencesOut)
async def put_preferences(
    caller: Manager, recipient_id: RecipientPath, body: PreferencesIn
) -> JSONResponse:
    """Replace a recipient's preferences.

    A workflow's own setting (`workflows`, for that workflow's sends) wins over the
    category's, which wins over the channel-wide one; a critical category or priority
    ignores them all. Categories must exist (422 `unknown_category`); workflows need not yet."""
    named = set(body.categories)
    missing = sorted(named - await category_store.known(caller.engine, caller.tenant_id, named))
    if missing:
        raise ValidationFailed(
            f"no category named {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            code="unknown_category",
            details=[{"field": f"categories.{name}", "category": name} for name in missing[:100]],
        )
    preferences = body.model_dump(mode="json")
    if not await store.set_preferences(caller.engine, caller.tenant_id, recipient_id, preferences):
        raise NotFound(f"no recipient {recipient_id!r}")
    return JSONResponse(preferences)
