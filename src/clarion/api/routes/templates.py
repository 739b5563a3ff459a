"""``/v1/templates``: store a new version, read, list, roll back, preview."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Query
from pydantic import Field, StringConstraints

from clarion.api.auth import Caller, Manager, Reader
from clarion.api.listing import KeyCursor, Size, by, page
from clarion.api.outputs import (
    Page,
    TemplatePage,
    TemplatePreviewOut,
    TemplateStored,
    TemplateVersionOut,
)
from clarion.api.refusals import refusal_error
from clarion.api.responses import JSONResponse, or_404
from clarion.api.schemas import NAME_PATTERN, Body, NamePath, RecipientId, TemplateIn
from clarion.domain import chat, whatsapp
from clarion.domain.durations import duration_seconds
from clarion.domain.layouts import Choice, Look
from clarion.domain.models import Channel
from clarion.domain.refusal import Refused
from clarion.domain.rendering import (
    LAYOUT_KEY,
    CompiledTemplate,
    CompiledVersion,
    compile_version,
    locale_chain,
)
from clarion.errors import MissingVariable, NotFound, TemplateError, ValidationFailed
from clarion.pipeline.layouts import look_of
from clarion.pipeline.planner import render_context
from clarion.store import categories as category_store
from clarion.store import layouts as layout_store
from clarion.store import recipients as recipient_store
from clarion.store import templates as store
from clarion.store.versioned import Versioned

router = APIRouter(prefix="/v1/templates", tags=["templates"])


# A stored version's number, as asked for and as the cursor of the list of versions.
Version = Annotated[int | None, Query(ge=1, le=2_147_483_647)]
_LAYOUT_NAME = re.compile(NAME_PATTERN)
LocaleTag = Annotated[
    str, StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
]


@router.put("/{name}", response_model=TemplateStored)
async def put(caller: Manager, name: NamePath, body: TemplateIn) -> JSONResponse:
    """Store a new version of a template and make it active."""
    channels, locales, compiled = await checked(caller, body)
    layout = compiled.layout
    version = await store.put(
        caller.engine,
        caller.tenant_id,
        name,
        category=body.category,
        channels=channels,
        locales=locales,
        fallbacks=_fallbacks(body, channels),
        layout=layout if isinstance(layout, str) else None,
        actor=caller.key_id,
    )
    if isinstance(version, Refused):
        raise refusal_error(version)
    return JSONResponse({"name": name, "version": version})


async def checked(
    caller: Caller, body: TemplateIn
) -> tuple[dict[str, Any], dict[str, Any], CompiledVersion]:
    """A template body's channels, locales and compiled form, once it is valid (else 422)."""
    if not await category_store.known(caller.engine, caller.tenant_id, [body.category]):
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
    _inapp_fallback(channels)
    _chat_part(channels, locales)
    _whatsapp_part(channels, locales)
    await _layout(caller, channels, locales)
    return channels, locales, _compiled(body.category, channels, locales)


async def _layout(caller: Caller, channels: dict[str, Any], locales: dict[str, Any]) -> None:
    """The email part's ``layout``: a layout of the tenant, null (the tenant's default) or
    false (none); chosen for every locale (a layout has locales of its own)."""
    for locale, overrides in locales.items():
        if LAYOUT_KEY in (overrides.get("email") or {}):
            raise ValidationFailed(
                "a template's layout is the same for every locale; a layout has locales of its own",
                details=[{"field": f"locales.{locale}.email.layout", "message": "not allowed"}],
            )
    email = channels.get("email") or {}
    chosen = email.get(LAYOUT_KEY)
    if chosen is None or chosen is False:
        return
    field = {"field": "channels.email.layout"}
    if not isinstance(chosen, str) or not _LAYOUT_NAME.match(chosen):
        raise ValidationFailed(
            "the email's layout is a layout's name, null (the default) or false (none)",
            details=[{**field, "message": "not a layout name, null or false"}],
        )
    if not await layout_store.exists(caller.engine, caller.tenant_id, chosen):
        raise ValidationFailed(
            f"no layout named {chosen!r}",
            code="unknown_layout",
            details=[{**field, "message": "not a layout of the tenant"}],
        )


def _chat_part(channels: dict[str, Any], locales: dict[str, Any]) -> None:
    """The chat part (and each locale's, merged over it) has its text, and blocks and a
    parse mode of the right shape (domain/chat.py)."""
    _part_checked("chat", chat.part_problems, channels, locales)


def _whatsapp_part(channels: dict[str, Any], locales: dict[str, Any]) -> None:
    """The WhatsApp part (and each locale's, merged over it) names a template with its
    language and parameters of the right shape, a Twilio content SID, or a text
    (domain/whatsapp.py)."""
    _part_checked("whatsapp", whatsapp.part_problems, channels, locales)


def _part_checked(
    channel: str,
    check: Callable[[Any, str], list[dict[str, str]]],
    channels: dict[str, Any],
    locales: dict[str, Any],
) -> None:
    if channel not in channels:
        return
    problems = check(channels[channel], f"channels.{channel}")
    for locale, overrides in locales.items():
        override = overrides.get(channel)
        if isinstance(override, dict) and isinstance(channels[channel], dict):
            merged = {**channels[channel], **override}
            problems.extend(check(merged, f"locales.{locale}.{channel}"))
    if problems:
        raise ValidationFailed(f"the {channel} part is not valid", details=problems)


_INAPP_FALLBACK_MAX = 7 * 86400


def _inapp_fallback(channels: dict[str, Any]) -> None:
    """``inapp.fallback_after`` (a duration, 1s to 7d) and ``inapp.fallback_channel``
    (another channel of the template) come together."""
    inapp = channels.get("inapp") or {}
    after, channel = inapp.get("fallback_after"), inapp.get("fallback_channel")
    if after is None and channel is None:
        return
    problems = []
    try:
        if not isinstance(after, str) or not 1 <= duration_seconds(after) <= _INAPP_FALLBACK_MAX:
            raise ValueError(after)
    except ValueError:
        problems.append(
            {"field": "channels.inapp.fallback_after", "message": "a duration from 1s to 7d"}
        )
    if not isinstance(channel, str) or channel == "inapp" or channel not in channels:
        problems.append(
            {
                "field": "channels.inapp.fallback_channel",
                "message": "another channel of the template",
            }
        )
    if problems:
        raise ValidationFailed("the in-app offline fallback is not valid", details=problems)


def _fallbacks(body: TemplateIn, channels: dict[str, Any]) -> dict[str, str]:
    """The template's fallback channels: each from and to one of its own channels."""
    fallbacks = {src.value: dst.value for src, dst in body.fallbacks.items()}
    for src, dst in fallbacks.items():
        if src not in channels or dst not in channels or src == dst:
            raise ValidationFailed(
                f"fallback {src!r} -> {dst!r} must lead from one of the template's channels "
                "to another",
                details=[{"field": f"fallbacks.{src}", "message": "not a channel of the template"}],
            )
    return fallbacks


@router.get("/{name}", response_model=TemplateVersionOut)
async def get(caller: Reader, name: NamePath, version: Version = None) -> JSONResponse:
    """The active version of a template, or the one asked for."""
    return await version_of(caller, store.TEMPLATES, "template", name, version)


async def version_of(
    caller: Caller, kind: Versioned, noun: str, key: str, version: int | None
) -> JSONResponse:
    """The active version of a ``kind`` of definition, or the one asked for (else 404)."""
    found = await kind.get(caller.engine, caller.tenant_id, key, version)
    if found is None:
        what = f"version {version} of {noun} {key!r}" if version else f"{noun} {key!r}"
        raise NotFound(f"no {what}")
    return JSONResponse(found)


def _compiled(category: str, channels: dict[str, Any], locales: dict[str, Any]) -> CompiledVersion:
    try:
        return compile_version(category, channels, locales)
    except TemplateError as exc:
        raise ValidationFailed(
            f"template error in {exc.message}",
            code="template_error",
            details=[{"line": exc.line, "message": exc.message}],
        ) from exc


@router.get("", response_model=TemplatePage)
async def list_templates(
    caller: Reader, limit: Size = 50, cursor: KeyCursor = None
) -> JSONResponse:
    """List templates by name (cursor-paginated)."""
    rows = await store.list_templates(
        caller.engine, caller.tenant_id, after=cursor, limit=limit + 1
    )
    return JSONResponse(page(rows, limit, by("name")))


@router.get("/{name}/versions", response_model=Page)
async def list_versions(
    caller: Reader, name: NamePath, limit: Size = 50, cursor: Version = None
) -> JSONResponse:
    """List a template's versions, newest first (an extension of the published API)."""
    rows = await store.list_versions(
        caller.engine, caller.tenant_id, name, before=cursor, limit=limit + 1
    )
    return JSONResponse(page(or_404(rows, f"no template {name!r}"), limit, by("version")))


class RollbackIn(Body):
    version: int = Field(ge=1, le=2_147_483_647)


@router.post("/{name}/rollback", response_model=TemplateVersionOut)
async def rollback(caller: Manager, name: NamePath, body: RollbackIn) -> JSONResponse:
    """Make a stored version active again; answers with that version.

    A version whose email names a layout deleted since is refused (422 `unknown_layout`)."""
    stored = await store.get(caller.engine, caller.tenant_id, name, body.version)
    layout = (stored or {}).get("channels", {}).get("email", {}).get(LAYOUT_KEY)
    if isinstance(layout, str) and not await layout_store.exists(
        caller.engine, caller.tenant_id, layout
    ):
        raise ValidationFailed(
            f"version {body.version} of template {name!r} names layout {layout!r}, which is gone",
            code="unknown_layout",
            details=[{"field": "version", "message": "names a deleted layout"}],
        )
    return await rolled_back(caller, store.TEMPLATES, "template", name, body.version)


async def rolled_back(
    caller: Manager, kind: Versioned, noun: str, key: str, version: int
) -> JSONResponse:
    """Make ``version`` of a ``kind`` of definition active; the answer is that version."""
    missing = await kind.rollback(
        caller.engine, caller.tenant_id, key, version, actor=caller.key_id
    )
    if missing == "version":
        raise NotFound(f"no version {version} of {noun} {key!r}")
    found = None if missing else await kind.get(caller.engine, caller.tenant_id, key)
    if found is None:  # none, or deleted between the two statements
        raise NotFound(f"no {noun} {key!r}")
    return JSONResponse(found)


class PreviewIn(Body):
    recipient_id: RecipientId | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    locale: LocaleTag | None = None
    channel: Channel | None = None
    version: int | None = Field(default=None, ge=1, le=2_147_483_647)
    digest: bool = Field(
        default=False,
        description=(
            "Extension: render the channels' `digest` content (only channels that have one), "
            "as a digest is rendered; give `items` and `count` in `data`."
        ),
    )


@router.post("/{name}/preview", response_model=TemplatePreviewOut)
async def preview(caller: Reader, name: NamePath, body: PreviewIn) -> JSONResponse:
    """Render a template without sending anything.

    Needs the `read` scope, since nothing is sent. Variables: `data` over the recipient's data
    (with `recipient_id`), plus `recipient`. The locale is `locale`, else the recipient's;
    `locale` in the answer is the most specific one the content used (`fr-CA` → `fr` → the
    default, null). `version` previews a stored version other than the active one. The email
    is laid out in its layout, and `brand` is the tenant's, as a send renders them. A variable
    the data lacks is a 422 `missing_variable`; any other render failure a 422 `render_error`."""
    found = await store.get(caller.engine, caller.tenant_id, name, body.version)
    if found is None:
        what = f"version {body.version} of template" if body.version else "template"
        raise NotFound(f"no {what} {name!r}")
    recipient = await preview_recipient(caller, body)
    compiled = _compiled(found["category"], found["channels"], found["locales"])
    look = await look_of(caller.engine, caller.tenant_id, compiled.layout)
    chosen, rendered = render_preview(compiled, body, recipient, look)
    return JSONResponse(
        {"name": name, "version": found["version"], "locale": chosen, "channels": rendered}
    )


async def preview_recipient(caller: Caller, body: PreviewIn) -> dict[str, Any]:
    """The recipient a preview names (404 if unknown), or nobody."""
    if body.recipient_id is None:
        return {}
    loaded = await recipient_store.get(caller.engine, caller.tenant_id, body.recipient_id)
    if loaded is None:
        raise NotFound(f"no recipient {body.recipient_id!r}")
    return loaded


def render_preview(
    compiled: CompiledVersion, body: PreviewIn, recipient: dict[str, Any], look: Look
) -> tuple[str | None, dict[str, Any]]:
    """The locale the content used and each channel rendered (an email in its layout), as
    a preview answers."""
    if body.digest:
        compiled = CompiledVersion(
            compiled.category,
            dict(compiled.digests),
            compiled.locale_digests,
            layout=compiled.layout,
        )
    locale = body.locale or recipient.get("locale")
    context = render_context({"data": body.data}, recipient, look.brand)
    rendered: dict[str, Any] = {}
    used: set[str] = set()
    for channel in _preview_channels(compiled, body.channel):
        content_locale, template = compiled.for_channel(channel, locale)
        if content_locale is not None:
            used.add(content_locale)
        dress = _Dress(look, compiled.layout)
        rendered[channel] = _render(channel, template, context, locale, recipient, dress)
    chosen = next((tag for tag in locale_chain(locale, compiled.locales) if tag in used), None)
    return chosen, rendered


def _preview_channels(compiled: CompiledVersion, channel: Channel | None) -> list[str]:
    if channel is None:
        return list(compiled.channels)
    if channel.value not in compiled.channels:
        raise ValidationFailed(
            f"the template has no {channel.value!r} channel",
            code="unknown_channel",
            details=[{"channel": channel.value, "available": sorted(compiled.channels)}],
        )
    return [channel.value]


class _Dress(NamedTuple):
    look: Look
    layout: Choice


def _render(
    channel: str,
    template: CompiledTemplate,
    context: dict[str, Any],
    locale: str | None,
    recipient: dict[str, Any],
    dress: _Dress,
) -> Any:
    timezone = recipient.get("timezone")
    try:
        content = template.render(context, locale=locale, timezone=timezone)
        return dress.look.dress(channel, dress.layout, content, context, locale, timezone)
    except TemplateError as exc:
        raise _render_failure(channel, exc) from exc


def _render_failure(channel: str, exc: TemplateError) -> ValidationFailed:
    """A render's failure as a 422 that says what to fix: the variable the data lacks, or
    the error."""
    if isinstance(exc, MissingVariable):
        code, detail = "missing_variable", {"variable": exc.name}
    else:
        code, detail = "render_error", {"message": exc.message}
    return ValidationFailed(
        f"{channel}: {exc.message}", code=code, details=[{"channel": channel, **detail}]
    )
