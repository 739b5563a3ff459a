"""``/v1/recipients``: create or replace, read, batch upsert, erase, export, preferences."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import TypeAdapter, ValidationError

from clarion.api.auth import Principal, require
from clarion.api.errors import describe_validation, error_body
from clarion.api.idempotency import idempotent
from clarion.api.responses import JSONResponse
from clarion.api.schemas import (
    MAX_BATCH,
    PreferencesIn,
    RecipientBatchIn,
    RecipientBatchItem,
    RecipientIn,
)
from clarion.errors import NotFound, ValidationFailed
from clarion.store import categories as category_store
from clarion.store import erasure
from clarion.store import recipients as store
from clarion.store.db import write_tx

router = APIRouter(prefix="/v1/recipients", tags=["recipients"])
_ITEM = TypeAdapter(RecipientBatchItem)

Manager = Annotated[Principal, Depends(require("manage"))]
Reader = Annotated[Principal, Depends(require("read"))]
RecipientPath = Annotated[str, Path(min_length=1, max_length=200)]


@router.put("/{recipient_id}", summary="Create or replace a recipient")
async def put(
    request: Request, principal: Manager, recipient_id: RecipientPath, body: RecipientIn
) -> JSONResponse:
    engine = request.app.state.ctx.engine
    async with write_tx(engine) as conn:
        await store.upsert_many(conn, principal.tenant_id, [{"id": recipient_id, **body.to_row()}])
    found = await store.get(engine, principal.tenant_id, recipient_id)
    return JSONResponse(found)


@router.get("/{recipient_id}", summary="A recipient")
async def get(request: Request, principal: Reader, recipient_id: RecipientPath) -> JSONResponse:
    found = await store.get(request.app.state.ctx.engine, principal.tenant_id, recipient_id)
    if found is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    return JSONResponse(found)


@router.post("/batch", summary="Create or replace up to 1,000 recipients")
async def batch(request: Request, principal: Manager, body: RecipientBatchIn) -> JSONResponse:
    if len(body.recipients) > MAX_BATCH:
        raise ValidationFailed(
            f"a batch holds at most {MAX_BATCH} recipients", code="batch_too_large"
        )

    async def handler() -> tuple[int, Any]:
        results: list[dict[str, Any]] = []
        rows: dict[str, dict[str, Any]] = {}
        for entry in body.recipients:
            try:
                item = _ITEM.validate_python(entry)
            except ValidationError as exc:
                results.append(
                    error_body(
                        "validation_error",
                        "the recipient is not valid",
                        describe_validation(exc.errors()),
                    )
                )
                continue
            rows[item.id] = {"id": item.id, **RecipientIn.to_row(item)}
            results.append({"id": item.id, "status": "ok"})
        if rows:
            async with write_tx(request.app.state.ctx.engine) as conn:
                await store.upsert_many(conn, principal.tenant_id, list(rows.values()))
        return 200, {"results": results}

    return await idempotent(
        request, principal.tenant_id, "recipients.batch", body.recipients, handler
    )


@router.delete(
    "/{recipient_id}",
    status_code=204,
    summary="Erase a recipient",
    description=(
        "Removes the recipient's contact data, tokens, subscriptions, preferences, data, "
        "inbox and sandbox captures; deliveries are kept for counts but lose their address, "
        "content, errors and any link to the recipient's id (their own ids change too, as "
        "they derive from it). Deliveries still waiting become `suppressed` (`cancelled`); "
        "dead letters become `failed`. On SQLite the freed pages are overwritten "
        "(`secure_delete`)."
    ),
)
async def erase(request: Request, principal: Manager, recipient_id: RecipientPath) -> Response:
    if not await erasure.erase(request.app.state.ctx.engine, principal.tenant_id, recipient_id):
        raise NotFound(f"no recipient {recipient_id!r}")
    return Response(status_code=204)


@router.get(
    "/{recipient_id}/export",
    summary="Everything stored about a recipient",
    description=(
        f"The recipient, its preferences, inbox messages, deliveries and sandbox captures, "
        f"the newest {erasure.EXPORT_LIMIT:,} of each list; `truncated` is true when a list "
        f"was cut."
    ),
)
async def export(request: Request, principal: Reader, recipient_id: RecipientPath) -> JSONResponse:
    found = await erasure.export(request.app.state.ctx.engine, principal.tenant_id, recipient_id)
    if found is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    return JSONResponse(found)


@router.get("/{recipient_id}/preferences", summary="A recipient's preferences")
async def get_preferences(
    request: Request, principal: Reader, recipient_id: RecipientPath
) -> JSONResponse:
    engine = request.app.state.ctx.engine
    found = await store.get_preferences(engine, principal.tenant_id, recipient_id)
    if found is None:
        raise NotFound(f"no recipient {recipient_id!r}")
    return JSONResponse(found)


@router.put(
    "/{recipient_id}/preferences",
    summary="Replace a recipient's preferences",
    description=(
        "A category's own setting wins over the channel-wide one; a critical category ignores "
        "both. Categories must exist (422 `unknown_category`)."
    ),
)
async def put_preferences(
    request: Request, principal: Manager, recipient_id: RecipientPath, body: PreferencesIn
) -> JSONResponse:
    engine = request.app.state.ctx.engine
    named = set(body.categories)
    missing = sorted(named - await category_store.known(engine, principal.tenant_id, named))
    if missing:
        raise ValidationFailed(
            f"no category named {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            code="unknown_category",
            details=[{"field": f"categories.{name}", "category": name} for name in missing[:100]],
        )
    preferences = body.model_dump(mode="json")
    if not await store.set_preferences(engine, principal.tenant_id, recipient_id, preferences):
        raise NotFound(f"no recipient {recipient_id!r}")
    return JSONResponse(preferences)
