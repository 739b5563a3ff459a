"""``POST /v1/templates/preview``: render a template that is not stored (an extension of
the published API). The console's editor previews each change as it is typed with it,
without storing a version per keystroke."""

from __future__ import annotations

from fastapi import APIRouter

from clarion.api.auth import Reader
from clarion.api.outputs import DraftPreviewOut
from clarion.api.responses import JSONResponse
from clarion.api.routes.templates import PreviewIn, checked, preview_recipient, render_preview
from clarion.api.schemas import TemplateIn
from clarion.errors import ValidationFailed
from clarion.pipeline.layouts import look_of

router = APIRouter(prefix="/v1/templates", tags=["templates"])


class DraftPreviewIn(PreviewIn):
    template: TemplateIn


@router.post("/preview", response_model=DraftPreviewOut)
async def preview_draft(caller: Reader, body: DraftPreviewIn) -> JSONResponse:
    """Render a draft template without storing or sending anything.

    `template` is a body `PUT /v1/templates/{name}` would take; it is checked the same way (422
    `template_error`, `unknown_category`, ...) and rendered like `POST
    /v1/templates/{name}/preview` renders a stored one. Nothing is stored."""
    if body.version is not None:
        raise ValidationFailed(
            "a draft has no versions", details=[{"field": "version", "message": "not allowed"}]
        )
    _, _, compiled = await checked(caller, body.template)
    recipient = await preview_recipient(caller, body)
    look = await look_of(caller.engine, caller.tenant_id, compiled.layout)
    locale, channels = render_preview(compiled, body, recipient, look)
    return JSONResponse({"locale": locale, "channels": channels})
