"""``/v1/categories``: the kinds of notification a tenant sends, and their policies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from clarion.api.auth import Manager, Reader
from clarion.api.listing import Size, by, page
from clarion.api.outputs import CategoryOut, CategoryPage
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, or_404
from clarion.api.schemas import NAME_PATTERN, CategoryIn, ShortNamePath
from clarion.domain.refusal import Refused
from clarion.store import categories as store

router = APIRouter(prefix="/v1/categories", tags=["categories"])


@router.put(
    "/{name}",
    summary="Create or replace a category",
    description=(
        "`transactional`, `marketing` and `security` always exist; storing one of them sets "
        "its policy, but `security` stays critical (422 otherwise). `digest.window` is a "
        "duration from `1m` to `7d` (`s`, `m`, `h`, `d` units)."
    ),
    response_model=CategoryOut,
)
async def put(
    request: Request, principal: Manager, name: ShortNamePath, body: CategoryIn
) -> JSONResponse:
    policy = body.model_dump(mode="json")
    if body.default_channels is not None:
        policy["default_channels"] = list(dict.fromkeys(policy["default_channels"]))
    found = await store.put(
        request.app.state.ctx.engine, principal.tenant_id, name, policy, actor=principal.key_id
    )
    if isinstance(found, Refused):
        raise refusal_error(found)
    request.app.state.ctx.categories.invalidate(principal.tenant_id)
    return JSONResponse(found)


@router.get("/{name}", summary="A category", response_model=CategoryOut)
async def get(request: Request, principal: Reader, name: ShortNamePath) -> JSONResponse:
    found = await store.get(request.app.state.ctx.engine, principal.tenant_id, name)
    return JSONResponse(or_404(found, f"no category {name!r}"))


@router.get(
    "", summary="The tenant's categories, built-ins included, by name", response_model=CategoryPage
)
async def list_categories(
    request: Request,
    principal: Reader,
    limit: Size = 50,
    cursor: Annotated[str | None, Query(max_length=100, pattern=NAME_PATTERN)] = None,
) -> JSONResponse:
    rows = await store.list_(
        request.app.state.ctx.engine, principal.tenant_id, after=cursor, limit=limit + 1
    )
    return JSONResponse(page(rows, limit, by("name")))
