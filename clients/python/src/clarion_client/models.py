"""Typed requests and responses. Each response model has the fields the server's OpenAPI
document gives its schema (a test checks them against ``/openapi.json``); fields a newer
server adds are kept (``extra="allow"``), so an upgrade of the server never breaks this
client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


# Requests -------------------------------------------------------------------------------


class To(BaseModel):
    """Exactly one of ``recipient_id``, ``recipient_ids`` or ``topic``."""

    model_config = ConfigDict(extra="forbid")

    recipient_id: str | None = None
    recipient_ids: list[str] | None = None
    topic: str | None = None


Priority = Literal["critical", "high", "normal", "low"]
Channel = Literal["email", "sms", "push", "webpush", "inapp", "webhook", "chat", "whatsapp"]


class NotificationRequest(BaseModel):
    """The body of ``POST /v1/notifications`` (and each item of a batch): exactly one of
    ``template`` or ``workflow`` (a run per recipient; ``cancellation_key`` is what
    ``workflows.cancel`` names), else a ``ValueError`` before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = None
    workflow: str | None = None
    cancellation_key: str | None = None
    to: To
    data: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    channels: list[Channel] | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    idempotency_key: str | None = None

    @model_validator(mode="after")
    def _template_or_workflow(self) -> NotificationRequest:
        if (self.template is None) == (self.workflow is None):
            raise ValueError("a notification names exactly one of template or workflow")
        return self


# Responses ------------------------------------------------------------------------------


class ErrorInfo(Model):
    code: str
    message: str
    details: list[Any] = Field(default_factory=list)


class Accepted(Model):
    """A notification accepted for delivery (202)."""

    id: str
    status: str


class BatchItemError(Model):
    error: ErrorInfo


class BatchResults(Model):
    """Per item, in request order: what was accepted, or why not."""

    results: list[Accepted | BatchItemError]


class Delivery(Model):
    id: str
    recipient_id: str | None
    channel: str
    provider: str | None
    status: str
    reason: str | None
    attempts: int
    last_error: str | None
    provider_message_id: str | None = None
    scheduled_for: datetime | None = None
    created_at: datetime
    updated_at: datetime | None = None
    sent_at: datetime | None = None


class DeliveryListItem(Delivery):
    notification_id: str
    category: str | None = None
    priority: str | None = None


class DeliveryEvent(Model):
    type: str
    at: datetime | None
    provider: str | None = None
    outcome: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    error_class: str | None = None
    reason: str | None = None
    attempt: int | None = None
    url: str | None = None  # a `clicked` event's link target


class Engagement(Model):
    """An email's opens and clicks as recorded (a click counts as an open)."""

    opens: int
    clicks: int
    opened: bool
    first_opened_at: datetime | None
    first_clicked_at: datetime | None


class DeliveryDetail(DeliveryListItem):
    tracking: Engagement
    events: list[DeliveryEvent]


class NotificationTo(Model):
    recipient_ids: list[str] | None = None
    topic: str | None = None


class NotificationSummary(Model):
    """A notification in the log: ``template`` for a template send, ``workflow`` (and a
    null ``template``) for a workflow send."""

    id: str
    status: str
    template: str | None
    workflow: str | None = None
    priority: str
    to: NotificationTo
    channels: list[str] | None
    send_at: datetime | None
    expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    totals: dict[str, int] = Field(default_factory=dict)


class Cancellation(Model):
    """Of a cancelled notification: what was cancelled, and what was under way and may
    still go out (the notification reads ``cancelling`` until none is left)."""

    cancelled: int
    in_flight: int


class RunStep(Model):
    """A step a run reached: a channel step's ``status`` is its best delivery's (``sent``,
    ``failed``, ...), else ``skipped``, ``waiting``, ``completed``, ``exited``, ``passed``,
    ``throttled`` or ``digested``; a delay, or a digest's open window, shows ``until``. A
    digest step shows ``count`` once its window closed, or ``into`` (the run that carries
    the window it joined)."""

    id: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    delivery_ids: list[str]
    until: datetime | None = None
    into: str | None = None
    count: int | None = None


class Run(Model):
    """A workflow send's run for one recipient, pinned to a workflow ``version``:
    ``status`` (``running``, ``waiting``, ``completed``, ``cancelled``, ``throttled``,
    ``digested``, ``failed``), the ``step`` it is at and, while waiting,
    ``waiting_until``."""

    id: str
    recipient_id: str
    workflow: str
    version: int
    status: str
    step: str | None
    waiting_until: datetime | None
    cancellation_key: str | None
    steps: list[RunStep]
    created_at: datetime
    updated_at: datetime


class RunsCancelled(Model):
    """How many runs a cancel by key stopped (those that had ended are not counted)."""

    cancelled: int


class Notification(NotificationSummary):
    """A notification with its deliveries; a workflow send also shows ``run_totals`` (runs
    per status) and its first 100 ``runs`` by recipient id (``notifications.runs`` pages
    them all)."""

    data: dict[str, Any]
    cancel: Cancellation | None = None
    deliveries: list[Delivery]
    deliveries_truncated: bool = False
    run_totals: dict[str, int] | None = None
    runs: list[Run] | None = None
    runs_truncated: bool | None = None


class Recipient(Model):
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


class RecipientToken(Model):
    token: str
    expires_at: datetime


class Preferences(Model):
    channels: dict[str, bool] = Field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = Field(default_factory=dict)
    workflows: dict[str, dict[str, bool]] = Field(default_factory=dict)
    quiet_hours: dict[str, Any] | None = None
    snooze_until: datetime | None = None


class TemplateStored(Model):
    name: str
    version: int


class Template(Model):
    name: str
    version: int
    category: str
    channels: dict[str, Any]
    locales: dict[str, Any]
    fallbacks: dict[str, str] = Field(default_factory=dict)
    created_at: datetime


class TemplateSummary(Model):
    name: str
    active_version: int
    latest_version: int
    category: str
    updated_at: datetime


class WorkflowStored(Model):
    key: str
    version: int


class _WorkflowHead(Model):
    """What a workflow's version and its line in the list both show."""

    key: str
    name: str
    category: str | None = None


class Workflow(_WorkflowHead):
    version: int
    steps: list[dict[str, Any]]
    created_at: datetime


class WorkflowSummary(_WorkflowHead):
    active_version: int
    latest_version: int
    updated_at: datetime


class LayoutStored(Model):
    name: str
    version: int


class Layout(Model):
    """A layout's version: ``html`` and ``text`` with ``{{ content }}``, and ``locales``."""

    name: str
    version: int
    html: str
    text: str
    locales: dict[str, dict[str, str]]
    default: bool = False
    created_at: datetime


class LayoutSummary(Model):
    name: str
    active_version: int
    latest_version: int
    default: bool
    updated_at: datetime


class Brand(Model):
    """The tenant's brand: these fields, and any other key it was given."""

    name: str | None = None
    logo_url: str | None = None
    colors: dict[str, str] | None = None
    address: str | None = None


class TemplatePreview(Model):
    name: str
    version: int
    locale: str | None
    channels: dict[str, dict[str, Any]]


class CategoryTracking(Model):
    """A category's open and click tracking of its email."""

    opens: bool = False
    clicks: bool = False


class Category(Model):
    name: str
    critical: bool
    default_channels: list[str] | None
    digest: dict[str, Any] | None
    max_per_hour: int | None
    max_per_day: int | None = None
    overflow: str = "drop"
    during_snooze: str = "defer"
    tracking: CategoryTracking = Field(default_factory=CategoryTracking)
    built_in: bool
    created_at: datetime | None
    updated_at: datetime | None


class Provider(Model):
    name: str
    channel: str
    kind: str
    config: dict[str, Any]
    priority: int
    rate_limit_per_second: float | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class Webhook(Model):
    name: str
    url: str
    events: list[str]
    secret: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class DeadLetter(Delivery):
    notification_id: str


class ReplayResult(Model):
    replayed: int
    more: bool


class SandboxMessage(Model):
    id: str
    delivery_id: str
    channel: str
    recipient_id: str
    to: Any = None
    content: dict[str, Any]
    created_at: datetime


SuppressionReason = Literal["bounced", "complained"]


class DsnResult(Model):
    """What a handed-in bounce message did: how many recipients it ``reported`` as failed
    or delayed, the addresses ``suppressed`` and the deliveries marked ``bounced``."""

    reported: int
    suppressed: int
    bounced: int


class Suppression(Model):
    """An email address on the suppression list: ``reason`` (``bounced``, ``complained``),
    ``source`` (``ses``, ``sendgrid``, ``dsn``, ``operator``), ``detail`` (the provider's
    diagnostic, or the operator's note) and the ``delivery_id`` a report named."""

    email: str
    reason: str
    source: str
    detail: str | None
    delivery_id: str | None
    created_at: datetime
    updated_at: datetime


class DraftPreview(Model):
    """A draft template rendered (nothing stored)."""

    locale: str | None
    channels: dict[str, dict[str, Any]]


class ProviderTestResult(Model):
    """One test message through one provider: ``ok``, or why not."""

    provider: str
    channel: str
    ok: bool
    provider_message_id: str | None = None
    error: str | None = None
    reason: str | None = None
    transient: bool | None = None


class AuditEntry(Model):
    """One change to the tenant's configuration: who (``key_id``), what, when, which fields
    (``diff``: ``{"field": {"from": ..., "to": ...}}``, secrets as ``"***"``)."""

    id: str
    at: datetime
    key_id: str
    action: str
    resource: str
    name: str
    diff: dict[str, Any]


Scope = Literal["send", "read", "manage", "admin"]


class ApiKey(Model):
    """An API key as listed: never its secret. The key starts with ``ck_<prefix>_``."""

    id: str
    name: str | None
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    """A key just made: ``secret`` is the whole key, shown in this answer only."""

    secret: str


class ScheduleRequest(BaseModel):
    """The body of ``PUT /v1/schedules/{name}``."""

    model_config = ConfigDict(extra="forbid")

    cron: str
    timezone: str = "UTC"
    notification: NotificationRequest
    enabled: bool = True
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class Schedule(Model):
    name: str
    cron: str
    timezone: str
    notification: dict[str, Any]
    enabled: bool
    starts_at: datetime | None
    ends_at: datetime | None
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ScheduleRun(Model):
    id: str
    due_at: datetime
    zone: str
    status: str
    fired_at: datetime | None
    finished_at: datetime | None
    notification_id: str | None
    notification_ids: list[str]
    recipients: int
    error: str | None


class Topic(Model):
    name: str
    subscribers: int


class TopicChange(Topic):
    """A subscribe (``added``, and ``errors`` for unknown ids) or an unsubscribe
    (``removed``); ``subscribers`` is the topic's size after it."""

    added: int | None = None
    removed: int | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


class TopicSubscriber(Model):
    recipient_id: str
    subscribed_at: datetime | None


class BreakerState(Model):
    provider: str
    state: str
    failure_rate: float
    calls: int
    failures: int
    window_seconds: float
    opened_at: datetime | None
    next_probe_at: datetime | None
    retry_in: float


class StatsMinute(Model):
    minute: datetime
    channel: str
    accepted: int
    sent: int
    failed: int


class StatsLatency(Model):
    p50: float
    p99: float
    samples: int


class Stats(Model):
    """Deliveries per minute and channel, latency per channel, dead letters and breakers
    over the last minutes."""

    since: datetime
    until: datetime
    per_minute: list[StatsMinute]
    latency_ms: dict[str, StatsLatency]
    dead_letters: int
    dead_letters_capped: bool
    breakers: list[BreakerState]
    truncated: bool


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    data: list[T]
    next_cursor: str | None


# The server's OpenAPI schema each response model mirrors (checked by the test suite).
SCHEMAS: dict[type[BaseModel], str] = {
    NotificationRequest: "NotificationIn",
    To: "To",
    Accepted: "NotificationAccepted",
    BatchResults: "BatchResults",
    Cancellation: "Cancellation",
    Notification: "NotificationDetail",
    NotificationSummary: "NotificationSummary",
    NotificationTo: "NotificationTo",
    Run: "RunOut",
    RunStep: "RunStepOut",
    RunsCancelled: "RunsCancelled",
    Delivery: "DeliveryOut",
    DeliveryListItem: "DeliveryListItem",
    DeliveryDetail: "DeliveryDetail",
    DeliveryEvent: "DeliveryEvent",
    Engagement: "Engagement",
    CategoryTracking: "Tracking",
    Recipient: "RecipientOut",
    RecipientToken: "RecipientToken",
    Preferences: "PreferencesOut",
    TemplateStored: "TemplateStored",
    Template: "TemplateVersionOut",
    TemplateSummary: "TemplateSummary",
    WorkflowStored: "WorkflowStored",
    Workflow: "WorkflowVersionOut",
    WorkflowSummary: "WorkflowSummary",
    TemplatePreview: "TemplatePreviewOut",
    LayoutStored: "LayoutStored",
    Layout: "LayoutVersionOut",
    LayoutSummary: "LayoutSummary",
    Brand: "BrandOut",
    Category: "CategoryOut",
    Provider: "ProviderOut",
    Webhook: "WebhookOut",
    DeadLetter: "DeadLetter",
    ReplayResult: "ReplayResult",
    SandboxMessage: "SandboxMessage",
    Suppression: "Suppression",
    DsnResult: "DsnResult",
    DraftPreview: "DraftPreviewOut",
    ProviderTestResult: "ProviderTestOut",
    AuditEntry: "AuditEntry",
    ApiKey: "ApiKeyOut",
    ApiKeyCreated: "ApiKeyCreated",
    ScheduleRequest: "ScheduleIn",
    Schedule: "ScheduleOut",
    ScheduleRun: "ScheduleRunOut",
    Topic: "TopicOut",
    TopicChange: "TopicChange",
    TopicSubscriber: "TopicSubscriber",
    BreakerState: "BreakerState",
    StatsMinute: "StatsMinute",
    StatsLatency: "StatsLatency",
    Stats: "StatsOut",
}
