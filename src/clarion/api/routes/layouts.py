"""``/v1/layouts``: email layouts (store a new version, read, list, roll back, delete), and
``/v1/brand``: the tenant's brand, ``brand.*`` in every template and layout."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field

from clarion.api.auth import Manager, Reader
from clarion.api.listing import KeyCursor, Size, by, page
from clarion.api.outputs import (
    BrandOut,
    LayoutPage,
    LayoutStored,
    LayoutVersionOut,
    LayoutVersionPage,
)
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, deleted, or_404
from clarion.api.routes.templates import Version, rolled_back
from clarion.api.schemas import Body, BrandIn, LayoutIn, NamePath
from clarion.domain.layouts import compile_layout
from clarion.domain.refusal import Refused
from clarion.errors import NotFound, TemplateError, ValidationFailed
from clarion.store import layouts as store

router = APIRouter(tags=["layouts"])


@router.put(
    "/v1/layouts/{name}",
    response_model=LayoutStored,
    responses={409: {"description": "A new layout past the cap (`too_many_layouts`)"}},
)
async def put(caller: Manager, name: NamePath, body: LayoutIn) -> JSONResponse:
    """Store a new version of a layout and make it active.

    `html` and `text` each print `{{ content }}`, where a template's rendered email goes; a
    part without it, or one the sandbox refuses (as it refuses templates), is a 422
    `template_error` naming the part and line. `default: true` makes it the tenant's default
    layout. A tenant has at most 100 layouts (409 `too_many_layouts`)."""
    content = body.content()
    try:
        compile_layout(content["html"], content["text"], content["locales"])
    except TemplateError as exc:
        part = exc.message.split(":", 1)[0]
        raise ValidationFailed(
            f"template error in {exc.message}",
            code="template_error",
            details=[{"field": part, "line": exc.line, "message": exc.message}],
        ) from exc
    version = await store.put(
        caller.engine, caller.tenant_id, name, content, default=body.default, actor=caller.key_id
    )
    if isinstance(version, Refused):
        raise refusal_error(version)
    return JSONResponse({"name": name, "version": version})


@router.get("/v1/layouts/{name}", response_model=LayoutVersionOut)
async def get(caller: Reader, name: NamePath, version: Version = None) -> JSONResponse:
    """The active version of a layout, or the one asked for."""
    found = await store.get(caller.engine, caller.tenant_id, name, version)
    if found is None:
        what = f"version {version} of layout" if version else "layout"
        raise NotFound(f"no {what} {name!r}")
    return JSONResponse(found)


@router.get("/v1/layouts", response_model=LayoutPage)
async def list_layouts(caller: Reader, limit: Size = 50, cursor: KeyCursor = None) -> JSONResponse:
    """List layouts by name (cursor-paginated); `default` marks the tenant's default."""
    rows = await store.list_layouts(caller.engine, caller.tenant_id, after=cursor, limit=limit + 1)
    return JSONResponse(page(rows, limit, by("name")))


@router.get("/v1/layouts/{name}/versions", response_model=LayoutVersionPage)
async def list_versions(
    caller: Reader, name: NamePath, limit: Size = 50, cursor: Version = None
) -> JSONResponse:
    """List a layout's versions, newest first (cursor-paginated)."""
    rows = await store.list_versions(
        caller.engine, caller.tenant_id, name, before=cursor, limit=limit + 1
    )
    return JSONResponse(page(or_404(rows, f"no layout {name!r}"), limit, by("version")))


class LayoutRollbackIn(Body):
    version: int = Field(ge=1, le=2_147_483_647)


@router.post("/v1/layouts/{name}/rollback", response_model=LayoutVersionOut)
async def rollback(caller: Manager, name: NamePath, body: LayoutRollbackIn) -> JSONResponse:
    """Make a stored version active again; answers with that version."""
    return await rolled_back(caller, store.LAYOUTS, "layout", name, body.version)


@router.delete(
    "/v1/layouts/{name}",
    status_code=204,
    response_class=Response,
    responses={
        409: {"description": "A template or the tenant's default uses it (`layout_in_use`)"}
    },
)
async def delete(caller: Manager, name: NamePath) -> Response:
    """Delete a layout with all its versions.

    Refused (409 `layout_in_use`) while the active version of a template names it (the
    details name the templates) or while it is the tenant's default."""
    found = await store.delete(caller.engine, caller.tenant_id, name, actor=caller.key_id)
    if isinstance(found, Refused):
        raise refusal_error(found)
    return deleted(found, "layout", name)


@router.get("/v1/brand", response_model=BrandOut)
async def get_brand(caller: Reader) -> JSONResponse:
    """The tenant's brand (`{}` when it has none)."""
    return JSONResponse(await store.brand_of(caller.engine, caller.tenant_id) or {})


@router.put("/v1/brand", response_model=BrandOut)
async def put_brand(caller: Manager, body: BrandIn) -> JSONResponse:
    """Replace the tenant's brand: `brand.*` in every template (of every channel) and layout.

    `name`, `logo_url`, `colors` and `address` are checked; any other key is kept as given
    (a name of letters, digits and `_`). The brand replaces a `brand` the data of a send
    may carry."""
    brand = body.stored()
    await store.put_brand(caller.engine, caller.tenant_id, brand, actor=caller.key_id)
    return JSONResponse(brand)


@router.delete("/v1/brand", status_code=204, response_class=Response)
async def delete_brand(caller: Manager) -> Response:
    """Remove the tenant's brand."""
    await store.put_brand(caller.engine, caller.tenant_id, None, actor=caller.key_id)
    return Response(status_code=204)
