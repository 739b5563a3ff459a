"""``/v1/templates``: store a new version, read the active one or any version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from clarion.api.auth import Principal, require
from clarion.api.responses import JSONResponse
from clarion.api.schemas import TemplateIn
from clarion.domain.rendering import compile_version
from clarion.errors import NotFound, TemplateError, ValidationFailed
from clarion.store import templates as store

router = APIRouter(prefix="/v1/templates", tags=["templates"])

Manager = Annotated[Principal, Depends(require("manage"))]
Reader = Annotated[Principal, Depends(require("read"))]
TemplateName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]

# Categories that always exist; others are created through /v1/categories.
BUILT_IN_CATEGORIES = frozenset({"transactional", "marketing", "security"})


@router.put("/{name}", summary="Store a new version of a template and make it active")
async def put(
    request: Request, principal: Manager, name: TemplateName, body: TemplateIn
) -> JSONResponse:
    if body.category not in BUILT_IN_CATEGORIES:
        raise ValidationFailed(f"no category named {body.category!r}", code="unknown_category")
    channels = {channel.value: content for channel, content in body.channels.items()}
    locales = {
        locale: {channel.value: content for channel, content in overrides.items()}
        for locale, overrides in body.locales.items()
    }
    for locale, overrides in locales.items():
        extra = set(overrides) - set(channels)
        if extra:
            raise ValidationFailed(
                f"locale {locale!r} overrides channels the template lacks: {sorted(extra)}"
            )
    try:
        compile_version(body.category, channels, locales)
    except TemplateError as exc:
        raise ValidationFailed(
            f"template error in {exc.message}",
            code="template_error",
            details=[{"line": exc.line, "message": exc.message}],
        ) from exc
    version = await store.put(
        request.app.state.ctx.engine,
        principal.tenant_id,
        name,
        category=body.category,
        channels=channels,
        locales=locales,
    )
    return JSONResponse({"name": name, "version": version})


@router.get("/{name}", summary="The active version of a template, or the one asked for")
async def get(
    request: Request,
    principal: Reader,
    name: TemplateName,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> JSONResponse:
    found = await store.get(request.app.state.ctx.engine, principal.tenant_id, name, version)
    if found is None:
        what = f"version {version} of template {name!r}" if version else f"template {name!r}"
        raise NotFound(f"no {what}")
    return JSONResponse(found)
