"""``/v1/categories``: the kinds of notification a tenant sends, and their policies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from clarion.api.auth import Manager, Reader
from clarion.api.listing import Size, by, page
from clarion.api.outputs import CategoryOut, CategoryPage
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, one_row
from clarion.api.schemas import NAME_PATTERN, CategoryIn, ShortNamePath
from clarion.domain.refusal import Refused
from clarion.store import categories as store

router = APIRouter(prefix="/v1/categories", tags=["categories"])


@router.put("/{name}", response_model=CategoryOut)
async def put(caller: Manager, name: ShortNamePath, body: CategoryIn) -> JSONResponse:
    """Create or replace a category.

    `transactional`, `marketing` and `security` always exist; storing one of them sets its
    policy, but `security` stays critical (422 otherwise). `digest.window` is a duration from
    `1m` to `7d` (`s`, `m`, `h`, `d` units)."""
    policy = body.model_dump(mode="json")
    if body.default_channels is not None:
        policy["default_channels"] = list(dict.fromkeys(policy["default_channels"]))
    found = await store.put(caller.engine, caller.tenant_id, name, policy, actor=caller.key_id)
    if isinstance(found, Refused):
        raise refusal_error(found)
    caller.ctx.categories.invalidate(caller.tenant_id)
    return JSONResponse(found)


@router.get("/{name}", response_model=CategoryOut)
async def get(caller: Reader, name: ShortNamePath) -> JSONResponse:
    """A category."""
    return await one_row(caller, store.get, name, "category")


@router.get("", response_model=CategoryPage)
async def list_categories(
    caller: Reader,
    limit: Size = 50,
    cursor: Annotated[str | None, Query(max_length=100, pattern=NAME_PATTERN)] = None,
) -> JSONResponse:
    """The tenant's categories, built-ins included, by name."""
    rows = await store.list_(caller.engine, caller.tenant_id, after=cursor, limit=limit + 1)
    return JSONResponse(page(rows, limit, by("name")))
