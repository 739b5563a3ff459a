"""Response models: what each operation answers, as published in ``/openapi.json``.

Handlers build plain dicts and answer with :class:`~clarion.api.responses.JSONResponse`
(orjson); these models document the shapes (and the SDK's models are checked against
them), they are not run on the hot path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")


class Out(BaseModel):
    """An answer's object; an answer may carry fields that are not described yet."""

    model_config = ConfigDict(extra="allow")


class Paged(BaseModel, Generic[Item]):
    """A page of a list (``api/listing.py``): ``next_cursor`` is null on the last page.
    Each list's page is a subclass, so that the OpenAPI document names it."""

    data: list[Item]
    next_cursor: str | None


class ErrorDetail(Out):
    code: str = Field(description="Machine-readable, e.g. `validation_error`, `not_found`")
    message: str
    details: list[Any] = Field(default_factory=list)


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class DeliveryOut(Out):
    id: str
    recipient_id: str | None
    channel: str
    provider: str | None
    status: str = Field(
        description="scheduled | queued | sending | sent | delivered | failed | suppressed | dead"
    )
    reason: str | None
    attempts: int
    last_error: str | None
    provider_message_id: str | None = None
    scheduled_for: datetime | None = None
    created_at: datetime
    updated_at: datetime | None = None
    sent_at: datetime | None = None


class DeliveryListItem(DeliveryOut):
    notification_id: str
    category: str | None = None
    priority: str | None = None


class DeliveryEvent(Out):
    type: str = Field(
        description="queued | scheduled | attempt | retry_scheduled | fallback | sent | "
        "delivered | read | failed | dead | suppressed | replayed | cancelled | opened | "
        "clicked (read: the provider reported the recipient read it, WhatsApp's read "
        "receipts)"
    )
    at: datetime | None
    provider: str | None = None
    outcome: str | None = Field(None, description="success | failure | retry, or null")
    latency_ms: float | None = Field(None, description="an attempt's provider call")
    error: str | None = None
    error_class: str | None = Field(
        None, description="a failed attempt's: timeout | transient | permanent | internal"
    )
    reason: str | None = None
    attempt: int | None = Field(None, description="an attempt's number (1 for the first)")
    url: str | None = Field(None, description="a `clicked` event's: the link's target")


class Engagement(Out):
    """An email's opens and clicks as recorded (docs/tracking.md): each is an event of the
    timeline; a click counts as an open too (images may be blocked)."""

    opens: int = Field(description="`opened` events recorded (at most the deployment's cap)")
    clicks: int = Field(description="`clicked` events recorded (at most the same cap)")
    opened: bool = Field(description="an open or a click was recorded")
    first_opened_at: datetime | None = Field(description="the first open, or the first click")
    first_clicked_at: datetime | None


class DeliveryDetail(DeliveryListItem):
    tracking: Engagement
    events: list[DeliveryEvent]


class DeliveryPage(Paged[DeliveryListItem]): ...


class NotificationTo(Out):
    recipient_ids: list[str] | None = None
    topic: str | None = None


class NotificationSummary(Out):
    id: str
    status: str = Field(
        description="accepted | scheduled | processing | completed | partial | failed | "
        "cancelling | cancelled"
    )
    template: str | None = Field(description="The template sent (null for a workflow send)")
    workflow: str | None = Field(None, description="A workflow send: the workflow run")
    priority: str
    to: NotificationTo
    channels: list[str] | None
    send_at: datetime | None
    expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    totals: dict[str, int] = Field(
        default_factory=dict, description="How many deliveries are in each status"
    )


class NotificationPage(Paged[NotificationSummary]): ...


class NotificationAccepted(Out):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"id": "ntf_01m8a0f3x5k2", "status": "accepted"}]},
    )

    id: str
    status: str = Field(description="accepted | scheduled")


class BatchResults(BaseModel):
    results: list[dict[str, Any]] = Field(
        description='In request order: `{"id", "status"}` or `{"error": {...}}`'
    )


class Cancellation(BaseModel):
    cancelled: int = Field(description="Deliveries cancelled: none of them will be sent")
    in_flight: int = Field(
        description="Deliveries whose attempt was under way when it was cancelled: they may "
        "still be sent; the notification reads `cancelling` until none is left"
    )


class RunStepOut(Out):
    id: str
    status: str = Field(
        description="A channel step: its best delivery's status (sent, delivered, failed, "
        "suppressed, ...); skipped (its `if` was false), waiting, completed (a delay over, "
        "a digest's window closed), exited, passed, throttled, digested"
    )
    started_at: datetime
    ended_at: datetime | None
    delivery_ids: list[str]
    until: datetime | None = Field(
        None, description="A delay: when it ends; a digest step's open window: when it closes"
    )
    into: str | None = Field(
        None, description="A digest step that joined another run's window: that run's id"
    )
    count: int | None = Field(
        None,
        description="A digest step whose window closed: the triggers it collected (`~digest`: "
        "the notifications the digest sums up)",
    )


class RunOut(Out):
    id: str
    recipient_id: str
    workflow: str = Field(
        description="The workflow run; `~template` for a template send's built-in workflow "
        "(its in-app part's offline fallback); `~digest` for the run that carried a "
        "category digest's window (its notification is the digest)"
    )
    version: int = Field(
        description="The workflow version the run is pinned to (`~template`: the template's; "
        "`~digest`: 1)"
    )
    status: str = Field(
        description="running | waiting | completed | cancelled | throttled | digested | failed"
    )
    step: str | None = Field(description="The step it is at, while it has not ended")
    waiting_until: datetime | None = Field(description="While waiting: when it goes on")
    cancellation_key: str | None
    steps: list[RunStepOut]
    created_at: datetime
    updated_at: datetime


class RunPage(Paged[RunOut]):
    """A workflow send's runs by recipient id; `next_cursor` is null on the last page."""


class WorkflowTestStep(Out):
    id: str
    type: str
    status: str = Field(description="What the step would come to (as assumed)")
    channels: list[str] | None = None
    mode: str | None = None
    content: dict[str, Any] | None = Field(
        None, description="A channel step: each channel's rendered content, or its error"
    )
    wait_seconds: float | None = None
    until: Any = None
    window_seconds: float | None = Field(None, description="A digest step: its window")
    key: str | None = Field(None, description="A digest step: the key of its window")


class WorkflowTestOut(Out):
    key: str
    version: int
    ends: str = Field(description="How the run would end: completed, throttled or failed")
    steps: list[WorkflowTestStep]


class RunsCancelled(Out):
    cancelled: int = Field(description="Runs cancelled (those that had ended are not counted)")


class NotificationDetail(NotificationSummary):
    data: dict[str, Any]
    cancel: Cancellation | None = Field(None, description="Present once it is cancelled")
    deliveries: list[DeliveryOut]
    deliveries_truncated: bool = False
    run_totals: dict[str, int] | None = Field(
        None,
        description="A send with runs (a workflow send; a template send whose in-app part "
        "falls back): how many runs are in each status",
    )
    runs: list[RunOut] | None = Field(
        None, description="A send with runs: its first 100 runs by recipient id"
    )
    runs_truncated: bool | None = None


class NotificationDeliveryPage(Paged[DeliveryOut]):
    """A notification's deliveries in id order; `next_cursor` is null on the last page."""


class TopicOut(Out):
    name: str
    subscribers: int


class TopicChange(TopicOut):
    added: int | None = Field(None, description="On subscribe: memberships added")
    removed: int | None = Field(None, description="On unsubscribe: memberships removed")
    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="Unknown recipient ids, each with its position"
    )


class TopicSubscriber(Out):
    recipient_id: str
    subscribed_at: datetime | None


class TopicSubscriberPage(Paged[TopicSubscriber]): ...


class Page(Paged[dict[str, Any]]):
    """A page of a list: `next_cursor` is null on the last page."""


class RecipientOut(Out):
    id: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    push_tokens: list[dict[str, Any]] | None = None
    webpush: list[dict[str, Any]] | None = None
    webhook_url: str | None = None
    chat: list[dict[str, Any]] | None = None
    whatsapp: str | None = None
    data: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class RecipientToken(Out):
    token: str
    expires_at: datetime


class PreferencesOut(Out):
    channels: dict[str, bool] = Field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = Field(default_factory=dict)
    workflows: dict[str, dict[str, bool]] = Field(default_factory=dict)
    quiet_hours: dict[str, Any] | None = None
    snooze_until: datetime | None = None


class TemplateStored(Out):
    name: str
    version: int


class TemplateVersionOut(Out):
    name: str
    version: int
    category: str
    channels: dict[str, Any]
    locales: dict[str, Any]
    fallbacks: dict[str, str] = Field(default_factory=dict)
    created_at: datetime


class TemplateSummary(Out):
    name: str
    active_version: int
    latest_version: int
    category: str
    updated_at: datetime


class TemplatePage(Paged[TemplateSummary]): ...


class WorkflowStored(Out):
    key: str
    version: int


class WorkflowVersionOut(Out):
    key: str
    version: int
    name: str
    category: str | None = None
    steps: list[dict[str, Any]]
    created_at: datetime


class WorkflowSummary(Out):
    key: str
    name: str
    category: str | None = None
    active_version: int
    latest_version: int
    updated_at: datetime


class WorkflowPage(Paged[WorkflowSummary]): ...


class WorkflowVersionSummary(Out):
    version: int
    active: bool = Field(description="Whether this is the version new sends run")
    name: str
    category: str | None = None
    steps: int = Field(description="How many steps the version has")
    created_at: datetime


class WorkflowVersionPage(Paged[WorkflowVersionSummary]): ...


class LayoutStored(Out):
    name: str
    version: int


class LayoutVersionOut(Out):
    name: str
    version: int
    html: str
    text: str
    locales: dict[str, dict[str, str]]
    default: bool = Field(default=False, description="Whether it is the tenant's default layout")
    created_at: datetime


class LayoutSummary(Out):
    name: str
    active_version: int
    latest_version: int
    default: bool
    updated_at: datetime


class LayoutPage(Paged[LayoutSummary]): ...


class LayoutVersionSummary(Out):
    version: int
    active: bool = Field(description="Whether this is the version sends are laid out in")
    created_at: datetime


class LayoutVersionPage(Paged[LayoutVersionSummary]): ...


class BrandOut(Out):
    """The tenant's brand, as stored: the checked fields and any other key."""

    name: str | None = None
    logo_url: str | None = None
    colors: dict[str, str] | None = None
    address: str | None = None


class TemplatePreviewOut(Out):
    name: str
    version: int
    locale: str | None
    channels: dict[str, dict[str, Any]]


class DraftPreviewOut(Out):
    locale: str | None
    channels: dict[str, dict[str, Any]]


class Tracking(Out):
    """A category's open and click tracking of its email."""

    opens: bool = False
    clicks: bool = False


class CategoryOut(Out):
    name: str
    critical: bool
    default_channels: list[str] | None
    digest: dict[str, Any] | None
    max_per_hour: int | None
    max_per_day: int | None = None
    overflow: str = "drop"
    during_snooze: str = "defer"
    tracking: Tracking = Field(default_factory=Tracking)
    built_in: bool
    created_at: datetime | None
    updated_at: datetime | None


class CategoryPage(Paged[CategoryOut]): ...


class ProviderOut(Out):
    name: str
    channel: str
    kind: str
    config: dict[str, Any] = Field(description='Settings, each secret shown as `"***"`')
    priority: int
    rate_limit_per_second: float | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ProviderTestOut(Out):
    provider: str
    channel: str
    ok: bool
    provider_message_id: str | None = None
    error: str | None = None
    reason: str | None = None
    transient: bool | None = None


class ProviderPage(Paged[ProviderOut]): ...


class WebhookOut(Out):
    name: str
    url: str
    events: list[str]
    secret: str = Field(description='`"***"`, except in the answer that made it')
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookPage(Paged[WebhookOut]): ...


class DeadLetter(DeliveryOut):
    notification_id: str


class DeadLetterPage(Paged[DeadLetter]): ...


class ReplayResult(Out):
    replayed: int
    more: bool = Field(description="Whether more dead letters match than were replayed")


class Suppression(Out):
    email: str = Field(description="The address, trimmed and lower-cased")
    reason: str = Field(description="bounced | complained")
    source: str = Field(description="ses | sendgrid | dsn | operator")
    detail: str | None = Field(description="The provider's diagnostic, or the operator's note")
    delivery_id: str | None = Field(description="The delivery the report was about, if named")
    created_at: datetime = Field(description="When the address was first suppressed")
    updated_at: datetime = Field(description="When it was last reported")


class SuppressionPage(Paged[Suppression]): ...


class DsnResult(Out):
    reported: int = Field(description="Recipients the DSN reports as failed or delayed")
    suppressed: int = Field(description="Addresses put on the suppression list")
    bounced: int = Field(description="Deliveries marked failed (bounced)")


class SandboxMessage(Out):
    id: str
    delivery_id: str
    channel: str
    recipient_id: str
    to: Any = None
    content: dict[str, Any]
    created_at: datetime


class SandboxPage(Paged[SandboxMessage]): ...


class InboxMessage(Out):
    id: str
    title: Any = None
    body: Any = None
    action_url: Any = None
    data: Any = None
    category: str | None = None
    created_at: datetime | None = None
    read_at: datetime | None = None
    seen_at: datetime | None = None
    archived_at: datetime | None = None


class InboxPage(Paged[InboxMessage]): ...


class InboxTicket(Out):
    ticket: str
    expires_at: datetime


class InboxCounts(Out):
    unread: int
    unseen: int
    total: int


class Updated(Out):
    updated: int


class Health(Out):
    status: str


class Ready(Out):
    status: str
    checks: dict[str, str]


class BreakerState(Out):
    provider: str
    state: str = Field(description="closed | open | half_open")
    failure_rate: float = Field(
        description="closed: over the rolling window; open or half_open: of the window "
        "that opened the breaker"
    )
    calls: int
    failures: int
    window_seconds: float = Field(description="the length of the rolling window")
    opened_at: datetime | None = Field(description="when the breaker opened; null if closed")
    next_probe_at: datetime | None = Field(
        description="when an open breaker lets a probe through; null if closed"
    )
    retry_in: float


class ProviderHealth(BaseModel):
    data: list[BreakerState]


class StatsMinute(Out):
    minute: datetime
    channel: str
    accepted: int
    sent: int
    failed: int


class StatsLatency(Out):
    p50: float
    p99: float
    samples: int


class StatsOut(Out):
    since: datetime
    until: datetime
    per_minute: list[StatsMinute]
    latency_ms: dict[str, StatsLatency]
    dead_letters: int
    dead_letters_capped: bool
    breakers: list[BreakerState]
    truncated: bool = Field(description="Whether more deliveries were created than were counted")


class Unsubscribed(Out):
    status: str
    category: str
    channel: str


class RecipientExport(Out):
    """Everything stored about a recipient."""

    recipient: RecipientOut
    preferences: PreferencesOut
    inbox_messages: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    sandbox_messages: list[dict[str, Any]]
    digests: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Open digest windows: channel, category, key, held, opened_at, closes_at",
    )
    workflow_runs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Workflow runs, newest first, as `GET /v1/notifications/{id}/runs` shows "
        "them, each with its `notification_id`",
    )
    truncated: bool = Field(description="Whether a list was cut at its limit")


class AuditEntry(Out):
    id: str
    at: datetime
    key_id: str = Field(description="The API key's id, or `cli` / `system`")
    action: str = Field(
        description="create | update | delete | rollback | revoke | rotate | reencrypt | erase"
    )
    resource: str = Field(
        description="template | provider | webhook | category | api_key | tenant | recipient"
    )
    name: str = Field(description="The resource's name (an erased recipient: its digest)")
    diff: dict[str, Any] = Field(
        description='The fields changed, `{"field": {"from": ..., "to": ...}}`; secrets as `***`'
    )


class AuditPage(Paged[AuditEntry]): ...


class ApiKeyOut(Out):
    id: str
    name: str | None = Field(description="Given when the key was made; null for older keys")
    prefix: str = Field(description="The key starts with `ck_<prefix>_`: tells keys apart")
    scopes: list[str] = Field(description="Some of send, read, manage, admin")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(
        description="The whole key, for `Authorization: Bearer`. Shown in this answer only: "
        "Clarion keeps just its hash"
    )


class ApiKeyPage(Paged[ApiKeyOut]): ...
