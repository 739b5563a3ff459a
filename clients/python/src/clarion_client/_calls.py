"""Every operation as a plain description of its request (method, path, query, body) and
of how to read its answer. The sync and async clients run the same descriptions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from clarion_client import models as m

R = TypeVar("R")
T = TypeVar("T", bound=BaseModel)
Recipients = str | Sequence[str] | Mapping[str, Any] | m.To


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    method: str
    path: str
    parse: Callable[[Any], R]
    params: dict[str, Any] | None = None
    json: Any = None
    idempotency_key: str | None = None
    # A body sent as it is (with its media type), instead of ``json``.
    content: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class ListCall(Generic[T]):
    """A cursor-paginated list: ``page(cursor)`` is the call for one page."""

    path: str
    item: type[T]
    params: dict[str, Any] = field(default_factory=dict)

    def page(self, cursor: str | None) -> Call[m.Page[T]]:
        params = dict(self.params)
        if cursor is not None:
            params["cursor"] = cursor
        page_type = m.Page[self.item]  # type: ignore[name-defined]
        return Call("GET", self.path, page_type.model_validate, params)


def new_idempotency_key() -> str:
    return f"py-{uuid.uuid4().hex}"


def _seg(value: str) -> str:
    return quote(value, safe="")


def _query(**params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _none(_: Any) -> None:
    return None


def to_target(to: Recipients) -> m.To:
    """``"u-1"`` → one recipient, ``["u-1", "u-2"]`` → several, or a mapping / ``To``."""
    if isinstance(to, m.To):
        return to
    if isinstance(to, str):
        return m.To(recipient_id=to)
    if isinstance(to, Mapping):
        return m.To.model_validate(dict(to))
    return m.To(recipient_ids=list(to))


def _body(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


# Notifications ---------------------------------------------------------------------------


def send_notification(
    *,
    to: Recipients,
    template: str | None = None,
    workflow: str | None = None,
    cancellation_key: str | None = None,
    data: Mapping[str, Any] | None = None,
    priority: m.Priority = "normal",
    channels: Sequence[m.Channel] | None = None,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> Call[m.Accepted]:
    """Accept one notification: a ``template`` sent, or a ``workflow`` run per recipient
    (exactly one of them, else a ``ValueError`` and nothing is sent; ``cancellation_key``
    goes with a workflow). Without ``idempotency_key`` one is made, so a retried request
    never sends twice."""
    request = m.NotificationRequest(
        template=template,
        workflow=workflow,
        cancellation_key=cancellation_key,
        to=to_target(to),
        data=dict(data or {}),
        priority=priority,
        channels=list(channels) if channels is not None else None,
        send_at=send_at,
        expires_at=expires_at,
    )
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "/v1/notifications", m.Accepted.model_validate, None, _body(request), key)


def send_batch(
    notifications: Sequence[m.NotificationRequest | Mapping[str, Any]],
    *,
    idempotency_key: str | None = None,
) -> Call[m.BatchResults]:
    """Accept up to 1,000 notifications, each naming a template or a workflow; each is
    accepted or refused on its own."""
    items = [
        _body(n if isinstance(n, m.NotificationRequest) else m.NotificationRequest(**n))
        for n in notifications
    ]
    key = idempotency_key or new_idempotency_key()
    return Call(
        "POST",
        "/v1/notifications/batch",
        m.BatchResults.model_validate,
        None,
        {"notifications": items},
        key,
    )


def get_notification(notification_id: str) -> Call[m.Notification]:
    return Call("GET", f"/v1/notifications/{_seg(notification_id)}", m.Notification.model_validate)


def list_notifications(
    *,
    status: str | None = None,
    template: str | None = None,
    recipient_id: str | None = None,
    category: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int | None = None,
) -> ListCall[m.NotificationSummary]:
    """The message log, newest first."""
    params = _query(
        status=status,
        template=template,
        recipient_id=recipient_id,
        category=category,
        created_after=created_after,
        created_before=created_before,
        limit=page_size,
    )
    return ListCall("/v1/notifications", m.NotificationSummary, params)


def list_runs(notification_id: str, *, page_size: int | None = None) -> ListCall[m.Run]:
    """A workflow send's runs, one per recipient, by recipient id: where each stands, and
    each step it reached with its deliveries."""
    path = f"/v1/notifications/{_seg(notification_id)}/runs"
    return ListCall(path, m.Run, _query(limit=page_size))


# Deliveries ------------------------------------------------------------------------------


def list_deliveries(
    *,
    status: str | None = None,
    channel: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
    recipient_id: str | None = None,
    notification_id: str | None = None,
    template: str | None = None,
    category: str | None = None,
    event: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int | None = None,
) -> ListCall[m.DeliveryListItem]:
    """Deliveries across notifications, newest first (``event``: only those with an
    ``opened`` or ``clicked`` event)."""
    params = _query(
        status=status,
        channel=channel,
        provider=provider,
        reason=reason,
        recipient_id=recipient_id,
        notification_id=notification_id,
        template=template,
        category=category,
        event=event,
        created_after=created_after,
        created_before=created_before,
        limit=page_size,
    )
    return ListCall("/v1/deliveries", m.DeliveryListItem, params)


def get_delivery(delivery_id: str) -> Call[m.DeliveryDetail]:
    """One delivery with its timeline of events."""
    return Call("GET", f"/v1/deliveries/{_seg(delivery_id)}", m.DeliveryDetail.model_validate)


# Recipients ------------------------------------------------------------------------------


def put_recipient(
    recipient_id: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
    push_tokens: Sequence[Mapping[str, Any]] | None = None,
    webpush: Sequence[Mapping[str, Any]] | None = None,
    webhook_url: str | None = None,
    chat: Sequence[Mapping[str, Any]] | None = None,
    whatsapp: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Call[m.Recipient]:
    """Create or replace a recipient (fields left out are cleared)."""
    body = _query(
        email=email,
        phone=phone,
        locale=locale,
        timezone=timezone,
        push_tokens=[dict(t) for t in push_tokens] if push_tokens is not None else None,
        webpush=[dict(w) for w in webpush] if webpush is not None else None,
        webhook_url=webhook_url,
        chat=[dict(c) for c in chat] if chat is not None else None,
        whatsapp=whatsapp,
        data=dict(data) if data is not None else None,
    )
    path = f"/v1/recipients/{_seg(recipient_id)}"
    return Call("PUT", path, m.Recipient.model_validate, None, body)


def get_recipient(recipient_id: str) -> Call[m.Recipient]:
    return Call("GET", f"/v1/recipients/{_seg(recipient_id)}", m.Recipient.model_validate)


def delete_recipient(recipient_id: str) -> Call[None]:
    """Erase a recipient: contact data, inbox, preferences, topic memberships."""
    return Call("DELETE", f"/v1/recipients/{_seg(recipient_id)}", _none)


def get_preferences(recipient_id: str) -> Call[m.Preferences]:
    path = f"/v1/recipients/{_seg(recipient_id)}/preferences"
    return Call("GET", path, m.Preferences.model_validate)


def put_preferences(
    recipient_id: str,
    *,
    channels: Mapping[str, bool] | None = None,
    categories: Mapping[str, Mapping[str, bool]] | None = None,
    quiet_hours: Mapping[str, Any] | None = None,
    snooze_until: datetime | None = None,
) -> Call[m.Preferences]:
    """Replace a recipient's preferences; ``snooze_until`` (an aware datetime) holds back
    every non-critical send until then."""
    body = _query(
        channels=dict(channels) if channels is not None else None,
        categories={k: dict(v) for k, v in categories.items()} if categories else None,
        quiet_hours=dict(quiet_hours) if quiet_hours is not None else None,
        snooze_until=snooze_until,
    )
    path = f"/v1/recipients/{_seg(recipient_id)}/preferences"
    return Call("PUT", path, m.Preferences.model_validate, None, body)


def recipient_token(recipient_id: str, *, expires_in: int | None = None) -> Call[m.RecipientToken]:
    """A token for the recipient's inbox (for an end user's browser or app)."""
    path = f"/v1/recipients/{_seg(recipient_id)}/token"
    body = _query(expires_in=expires_in)
    return Call("POST", path, m.RecipientToken.model_validate, None, body)


# Templates -------------------------------------------------------------------------------


def put_template(
    name: str,
    *,
    channels: Mapping[str, Any],
    category: str | None = None,
    locales: Mapping[str, Any] | None = None,
) -> Call[m.TemplateStored]:
    """Store a new version of a template and make it active."""
    body = _query(
        channels=dict(channels),
        category=category,
        locales=dict(locales) if locales is not None else None,
    )
    return Call("PUT", f"/v1/templates/{_seg(name)}", m.TemplateStored.model_validate, None, body)


def _version(path: str, model: Callable[[Any], T], version: int | None) -> Call[T]:
    """A versioned definition's active version, or ``version`` of it."""
    return Call("GET", path, model, _query(version=version))


def _rollback(path: str, model: Callable[[Any], T], version: int) -> Call[T]:
    return Call("POST", f"{path}/rollback", model, None, {"version": version})


def get_template(name: str, *, version: int | None = None) -> Call[m.Template]:
    return _version(f"/v1/templates/{_seg(name)}", m.Template.model_validate, version)


def list_templates(*, page_size: int | None = None) -> ListCall[m.TemplateSummary]:
    return ListCall("/v1/templates", m.TemplateSummary, _query(limit=page_size))


def rollback_template(name: str, *, version: int) -> Call[m.Template]:
    return _rollback(f"/v1/templates/{_seg(name)}", m.Template.model_validate, version)


# Layouts and the brand -------------------------------------------------------------------


def put_layout(
    name: str,
    *,
    html: str,
    text: str,
    locales: Mapping[str, Mapping[str, str]] | None = None,
    default: bool | None = None,
) -> Call[m.LayoutStored]:
    """Store a new version of an email layout and make it active. ``html`` and ``text``
    each print ``{{ content }}`` where a template's email goes; ``default``: True makes it
    the tenant's default layout, False makes it no longer the default."""
    body = _query(
        html=html,
        text=text,
        locales={k: dict(v) for k, v in locales.items()} if locales is not None else None,
        default=default,
    )
    return Call("PUT", f"/v1/layouts/{_seg(name)}", m.LayoutStored.model_validate, None, body)


def get_layout(name: str, *, version: int | None = None) -> Call[m.Layout]:
    """A layout's active version, or ``version`` of it."""
    return _version(f"/v1/layouts/{_seg(name)}", m.Layout.model_validate, version)


def list_layouts(*, page_size: int | None = None) -> ListCall[m.LayoutSummary]:
    """The tenant's layouts by name; ``default`` marks its default one."""
    return ListCall("/v1/layouts", m.LayoutSummary, _query(limit=page_size))


def rollback_layout(name: str, *, version: int) -> Call[m.Layout]:
    """Make a stored version of a layout active again."""
    return _rollback(f"/v1/layouts/{_seg(name)}", m.Layout.model_validate, version)


def delete_layout(name: str) -> Call[None]:
    """Delete a layout with all its versions (a 409 ``layout_in_use`` while a template's
    active version names it, or while it is the default)."""
    return Call("DELETE", f"/v1/layouts/{_seg(name)}", _none)


def get_brand() -> Call[m.Brand]:
    """The tenant's brand (empty when it has none)."""
    return Call("GET", "/v1/brand", m.Brand.model_validate)


def put_brand(brand: Mapping[str, Any]) -> Call[m.Brand]:
    """Replace the tenant's brand: ``brand.*`` in every template and layout."""
    return Call("PUT", "/v1/brand", m.Brand.model_validate, None, dict(brand))


def delete_brand() -> Call[None]:
    """Remove the tenant's brand."""
    return Call("DELETE", "/v1/brand", _none)


# Workflows -------------------------------------------------------------------------------


def put_workflow(
    key: str, *, name: str, steps: Sequence[Mapping[str, Any]], category: str | None = None
) -> Call[m.WorkflowStored]:
    """Store a new version of a workflow and make it active."""
    body = _query(name=name, steps=[dict(s) for s in steps], category=category)
    return Call("PUT", f"/v1/workflows/{_seg(key)}", m.WorkflowStored.model_validate, None, body)


def get_workflow(key: str, *, version: int | None = None) -> Call[m.Workflow]:
    """A workflow's active version, or ``version`` of it."""
    return _version(f"/v1/workflows/{_seg(key)}", m.Workflow.model_validate, version)


def rollback_workflow(key: str, *, version: int) -> Call[m.Workflow]:
    """Make a stored version of a workflow active again."""
    return _rollback(f"/v1/workflows/{_seg(key)}", m.Workflow.model_validate, version)


def delete_workflow(key: str) -> Call[None]:
    """Delete a workflow with all its versions."""
    return Call("DELETE", f"/v1/workflows/{_seg(key)}", _none)


def cancel_runs(
    key: str, *, cancellation_key: str, recipient_ids: Sequence[str] | None = None
) -> Call[m.RunsCancelled]:
    """Cancel this workflow's runs sent with ``cancellation_key`` (of ``recipient_ids``
    only, up to 1,000, when given) that have not ended, with their deliveries not yet
    under way; ``cancelled`` counts them. Not retried after a lost connection (a repeat
    would count 0); calling it again is safe."""
    body = _query(
        cancellation_key=cancellation_key,
        recipient_ids=list(recipient_ids) if recipient_ids is not None else None,
    )
    path = f"/v1/workflows/{_seg(key)}/cancel"
    return Call("POST", path, m.RunsCancelled.model_validate, None, body)


def list_workflows(*, page_size: int | None = None) -> ListCall[m.WorkflowSummary]:
    """The tenant's workflows by key, each with its active version's name and category."""
    return ListCall("/v1/workflows", m.WorkflowSummary, _query(limit=page_size))


def preview_template(
    name: str,
    *,
    data: Mapping[str, Any] | None = None,
    recipient_id: str | None = None,
    locale: str | None = None,
    channel: str | None = None,
    version: int | None = None,
    digest: bool | None = None,
) -> Call[m.TemplatePreview]:
    """Render a template without sending anything (``digest``: its digest content, with
    ``items`` and ``count`` in ``data``)."""
    body = _query(
        data=dict(data) if data is not None else None,
        recipient_id=recipient_id,
        locale=locale,
        channel=channel,
        version=version,
        digest=digest,
    )
    path = f"/v1/templates/{_seg(name)}/preview"
    return Call("POST", path, m.TemplatePreview.model_validate, None, body)


def preview_draft(
    *,
    channels: Mapping[str, Any],
    category: str | None = None,
    locales: Mapping[str, Any] | None = None,
    fallbacks: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
    recipient_id: str | None = None,
    locale: str | None = None,
    channel: str | None = None,
    digest: bool | None = None,
) -> Call[m.DraftPreview]:
    """Render a template that is not stored (checked as ``put`` would check it); nothing
    is stored or sent."""
    template = _query(
        channels=dict(channels),
        category=category,
        locales=dict(locales) if locales is not None else None,
        fallbacks=dict(fallbacks) if fallbacks is not None else None,
    )
    body = _query(
        template=template,
        data=dict(data) if data is not None else None,
        recipient_id=recipient_id,
        locale=locale,
        channel=channel,
        digest=digest,
    )
    return Call("POST", "/v1/templates/preview", m.DraftPreview.model_validate, None, body)


# Categories ------------------------------------------------------------------------------


def put_category(
    name: str,
    *,
    critical: bool = False,
    default_channels: Sequence[m.Channel] | None = None,
    digest: Mapping[str, Any] | None = None,
    max_per_hour: int | None = None,
    max_per_day: int | None = None,
    overflow: str | None = None,
    during_snooze: str | None = None,
    tracking: Mapping[str, bool] | None = None,
) -> Call[m.Category]:
    """Create or replace a category's policy (``overflow``: drop, defer or digest;
    ``during_snooze``: defer or drop; ``tracking``: ``{"opens": bool, "clicks": bool}``,
    the open and click tracking of its email)."""
    body = _query(
        critical=critical,
        default_channels=list(default_channels) if default_channels is not None else None,
        digest=dict(digest) if digest is not None else None,
        max_per_hour=max_per_hour,
        max_per_day=max_per_day,
        overflow=overflow,
        during_snooze=during_snooze,
        tracking=dict(tracking) if tracking is not None else None,
    )
    return Call("PUT", f"/v1/categories/{_seg(name)}", m.Category.model_validate, None, body)


def get_category(name: str) -> Call[m.Category]:
    return Call("GET", f"/v1/categories/{_seg(name)}", m.Category.model_validate)


def list_categories(*, page_size: int | None = None) -> ListCall[m.Category]:
    return ListCall("/v1/categories", m.Category, _query(limit=page_size))


# Providers -------------------------------------------------------------------------------


def put_provider(
    name: str,
    *,
    channel: m.Channel,
    kind: str,
    config: Mapping[str, Any] | None = None,
    priority: int = 1,
    rate_limit_per_second: float | None = None,
    enabled: bool = True,
) -> Call[m.Provider]:
    """Create or replace a provider; secrets in ``config`` are stored encrypted and shown
    as ``"***"`` from then on."""
    body = _query(
        channel=channel,
        kind=kind,
        config=dict(config or {}),
        priority=priority,
        rate_limit_per_second=rate_limit_per_second,
        enabled=enabled,
    )
    return Call("PUT", f"/v1/providers/{_seg(name)}", m.Provider.model_validate, None, body)


def get_provider(name: str) -> Call[m.Provider]:
    return Call("GET", f"/v1/providers/{_seg(name)}", m.Provider.model_validate)


def list_providers(*, page_size: int | None = None) -> ListCall[m.Provider]:
    return ListCall("/v1/providers", m.Provider, _query(limit=page_size))


def delete_provider(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/providers/{_seg(name)}", _none)


def test_provider(name: str, *, recipient_id: str) -> Call[m.ProviderTestResult]:
    """Send one fixed test message through this provider alone, now, to the recipient's
    address on its channel (scope ``manage``); ``ok`` says whether the service took it."""
    path = f"/v1/providers/{_seg(name)}/test"
    body = {"recipient_id": recipient_id}
    return Call("POST", path, m.ProviderTestResult.model_validate, None, body)


# Webhooks --------------------------------------------------------------------------------


def put_webhook(
    name: str,
    *,
    url: str,
    events: Sequence[str],
    secret: str | None = None,
    enabled: bool = True,
) -> Call[m.Webhook]:
    """Create or replace a status webhook. Without ``secret`` for a new one, Clarion makes
    one and shows it once, in this answer."""
    body = _query(url=url, events=list(events), secret=secret, enabled=enabled)
    return Call("PUT", f"/v1/webhooks/{_seg(name)}", m.Webhook.model_validate, None, body)


def get_webhook(name: str) -> Call[m.Webhook]:
    return Call("GET", f"/v1/webhooks/{_seg(name)}", m.Webhook.model_validate)


def list_webhooks(*, page_size: int | None = None) -> ListCall[m.Webhook]:
    return ListCall("/v1/webhooks", m.Webhook, _query(limit=page_size))


def delete_webhook(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{_seg(name)}", _none)


# Dead letters ----------------------------------------------------------------------------


def list_dead_letters(
    *,
    channel: str | None = None,
    provider: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    page_size: int | None = None,
) -> ListCall[m.DeadLetter]:
    """Deliveries out of attempts, newest first (scope ``admin``)."""
    params = _query(channel=channel, provider=provider, after=after, before=before, limit=page_size)
    return ListCall("/v1/dead-letters", m.DeadLetter, params)


def replay_dead_letter(
    delivery_id: str, *, idempotency_key: str | None = None
) -> Call[m.DeadLetter]:
    """Queue one dead delivery again."""
    path = f"/v1/dead-letters/{_seg(delivery_id)}/replay"
    key = idempotency_key or new_idempotency_key()
    return Call("POST", path, m.DeadLetter.model_validate, None, None, key)


def replay_dead_letters(
    *,
    channel: str | None = None,
    provider: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    limit: int | None = None,
    idempotency_key: str | None = None,
) -> Call[m.ReplayResult]:
    """Queue again the dead deliveries that match (all of them without filters)."""
    body = _query(channel=channel, provider=provider, after=after, before=before, limit=limit)
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "/v1/dead-letters/replay", m.ReplayResult.model_validate, None, body, key)


# Sandbox ---------------------------------------------------------------------------------


def list_sandbox_messages(
    *, channel: str | None = None, recipient_id: str | None = None, page_size: int | None = None
) -> ListCall[m.SandboxMessage]:
    """What the sandbox provider captured, newest first."""
    params = _query(channel=channel, recipient_id=recipient_id, limit=page_size)
    return ListCall("/v1/sandbox/messages", m.SandboxMessage, params)


# Suppressions ----------------------------------------------------------------------------


def list_suppressions(
    *,
    email: str | None = None,
    reason: m.SuppressionReason | None = None,
    channel: str | None = None,
    page_size: int | None = None,
) -> ListCall[m.Suppression]:
    """The email addresses Clarion does not send to, newest first (``email``: that one
    address, matched trimmed and lower-cased; ``channel``: only ``email`` has a list)."""
    params = _query(email=email, reason=reason, channel=channel, limit=page_size)
    return ListCall("/v1/suppressions", m.Suppression, params)


def get_suppression(email: str) -> Call[m.Suppression]:
    """One address on the suppression list (404 when it is not on it)."""
    return Call("GET", f"/v1/suppressions/{_seg(email)}", m.Suppression.model_validate)


def add_suppression(
    email: str,
    *,
    reason: m.SuppressionReason,
    detail: str | None = None,
    idempotency_key: str | None = None,
) -> Call[m.Suppression]:
    """Put an address on the suppression list (source ``operator``); ``detail`` is a note
    of up to 1,000 characters. An address already on it takes the new reason and note."""
    body = _query(email=email, reason=reason, detail=detail)
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "/v1/suppressions", m.Suppression.model_validate, None, body, key)


def hand_in_dsn(message: bytes) -> Call[m.DsnResult]:
    """Hand in a bounce message (an RFC 3464 delivery status notification, as the mail
    server received it): the addresses it reports as failed for good go on the suppression
    list (source ``dsn``), and the deliveries it names are marked bounced."""
    if not isinstance(message, bytes | bytearray):
        raise TypeError("the message is the raw bytes of the email")
    return Call(
        "POST",
        "/v1/suppressions/dsn",
        m.DsnResult.model_validate,
        content=bytes(message),
        content_type="message/rfc822",
    )


def delete_suppression(email: str) -> Call[None]:
    """Take an address off the suppression list: email to it goes out again (404 when it
    is not on it)."""
    return Call("DELETE", f"/v1/suppressions/{_seg(email)}", _none)


# Audit log -------------------------------------------------------------------------------


def list_audit(
    *,
    resource: str | None = None,
    name: str | None = None,
    key_id: str | None = None,
    action: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    page_size: int | None = None,
) -> ListCall[m.AuditEntry]:
    """Changes to the tenant's configuration, newest first (scope ``admin``); ``after`` is
    inclusive, ``before`` exclusive."""
    params = _query(
        resource=resource,
        name=name,
        key_id=key_id,
        action=action,
        after=after,
        before=before,
        limit=page_size,
    )
    return ListCall("/v1/audit", m.AuditEntry, params)


# API keys --------------------------------------------------------------------------------


def list_keys(*, page_size: int | None = None) -> ListCall[m.ApiKey]:
    """The tenant's API keys, newest first, revoked ones too; never their secrets (scope
    ``admin``)."""
    return ListCall("/v1/keys", m.ApiKey, _query(limit=page_size))


def create_key(*, name: str, scopes: Sequence[m.Scope]) -> Call[m.ApiKeyCreated]:
    """Make a key with a name and scopes (only scopes the calling key holds); its
    ``secret`` is in this answer only. Not retried after a lost connection: the answer is
    never stored, so a retry would make a second key."""
    body = {"name": name, "scopes": list(scopes)}
    return Call("POST", "/v1/keys", m.ApiKeyCreated.model_validate, None, body)


def revoke_key(key_id: str) -> Call[None]:
    """Revoke a key: refused everywhere within 30 seconds. A key cannot revoke itself
    (:class:`ConflictError`, ``cannot_revoke_own_key``)."""
    return Call("DELETE", f"/v1/keys/{_seg(key_id)}", _none)


# Schedules -------------------------------------------------------------------------------


def put_schedule(
    name: str,
    *,
    cron: str,
    notification: m.NotificationRequest | Mapping[str, Any],
    timezone: str = "UTC",
    enabled: bool = True,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> Call[m.Schedule]:
    """Create or replace a recurring schedule: ``notification`` (a send's body, naming a
    template or a workflow, without ``send_at`` or ``idempotency_key``) goes out at each
    ``cron`` time in ``timezone`` (an IANA zone, or ``"recipient"``: each recipient's own)."""
    if isinstance(notification, Mapping):
        fields = dict(notification)
        if "to" in fields:
            fields["to"] = to_target(fields["to"])
        notification = m.NotificationRequest(**fields)
    request = m.ScheduleRequest(
        cron=cron,
        timezone=timezone,
        notification=notification,
        enabled=enabled,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    path = f"/v1/schedules/{_seg(name)}"
    return Call("PUT", path, m.Schedule.model_validate, None, _body(request))


def get_schedule(name: str) -> Call[m.Schedule]:
    return Call("GET", f"/v1/schedules/{_seg(name)}", m.Schedule.model_validate)


def list_schedules(*, page_size: int | None = None) -> ListCall[m.Schedule]:
    """The tenant's schedules, in name order."""
    return ListCall("/v1/schedules", m.Schedule, _query(limit=page_size))


def delete_schedule(name: str) -> Call[None]:
    """Delete a schedule and its run history."""
    return Call("DELETE", f"/v1/schedules/{_seg(name)}", _none)


def list_schedule_runs(name: str, *, page_size: int | None = None) -> ListCall[m.ScheduleRun]:
    """A schedule's runs, newest first."""
    path = f"/v1/schedules/{_seg(name)}/runs"
    return ListCall(path, m.ScheduleRun, _query(limit=page_size))


# Topics ----------------------------------------------------------------------------------


def get_topic(name: str) -> Call[m.Topic]:
    """A topic and its number of subscribers (404 when it does not exist)."""
    return Call("GET", f"/v1/topics/{_seg(name)}", m.Topic.model_validate)


def create_topic(name: str) -> Call[m.Topic]:
    """Create a topic (one that exists is left as it is); sends to it are accepted even
    while it has no subscribers."""
    return Call("PUT", f"/v1/topics/{_seg(name)}", m.Topic.model_validate)


def delete_topic(name: str) -> Call[None]:
    """Delete a topic and its memberships; later sends to it are refused (`unknown_topic`)."""
    return Call("DELETE", f"/v1/topics/{_seg(name)}", _none)


def list_topic_subscribers(
    name: str, *, page_size: int | None = None
) -> ListCall[m.TopicSubscriber]:
    """A topic's subscribers, in recipient id order."""
    path = f"/v1/topics/{_seg(name)}/subscribers"
    return ListCall(path, m.TopicSubscriber, _query(limit=page_size))


def subscribe(name: str, recipient_ids: Sequence[str]) -> Call[m.TopicChange]:
    """Subscribe up to 10,000 recipients; unknown ids come back in ``errors``."""
    path = f"/v1/topics/{_seg(name)}/subscribers"
    body = {"recipient_ids": list(recipient_ids)}
    return Call("PUT", path, m.TopicChange.model_validate, None, body)


def unsubscribe(name: str, recipient_ids: Sequence[str]) -> Call[m.TopicChange]:
    """Unsubscribe up to 10,000 recipients."""
    path = f"/v1/topics/{_seg(name)}/subscribers"
    body = {"recipient_ids": list(recipient_ids)}
    return Call("DELETE", path, m.TopicChange.model_validate, None, body)


# Stats -----------------------------------------------------------------------------------


def get_stats(*, minutes: int | None = None) -> Call[m.Stats]:
    """Deliveries per minute and channel over the last ``minutes`` (1 to 60), latency,
    dead letters and circuit breakers."""
    return Call("GET", "/v1/stats", m.Stats.model_validate, _query(minutes=minutes))
