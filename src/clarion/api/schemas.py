"""Request bodies, validated. Shapes follow the published API contract."""

from __future__ import annotations

import re
from collections.abc import Sized
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from clarion.api.errors import describe_validation
from clarion.domain.chat import MATTERMOST_CHANNEL, SLACK_CHANNEL, TELEGRAM_CHAT, chat_id_text
from clarion.domain.contact import normal_email, normal_phone
from clarion.domain.models import Channel, Priority
from clarion.errors import ValidationFailed

MAX_BATCH = 1000
# A recipient's `data` is merged into every render: kept small so planning stays cheap.
MAX_RECIPIENT_DATA = 64 * 1024

# What a tenant may name its templates, topics, schedules (up to 200 characters),
# providers, webhooks and categories (up to 100).
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN)]
NamePath = Annotated[str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN)]
ShortNamePath = Annotated[str, Path(min_length=1, max_length=100, pattern=NAME_PATTERN)]
RecipientId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class Body(BaseModel):
    """A request body, or a part of one: a field it does not know is refused (422), so that
    a misspelt option is not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def example(sample: dict[str, Any]) -> ConfigDict:
    """The config of a :class:`Body` that shows ``sample`` in the API document (pydantic
    merges it with the base's)."""
    return ConfigDict(json_schema_extra={"examples": [sample]})


Item = TypeVar("Item", bound=BaseModel)


class BatchItems(Generic[Item]):
    """The items of a batch body (each a ``noun``): at most :data:`MAX_BATCH`, each
    validated alone, so that each is accepted or refused on its own."""

    def __init__(self, model: type[Item], noun: str) -> None:
        self._adapter = TypeAdapter(model)
        self._noun = noun

    def check_size(self, entries: Sized) -> None:
        """A 422 (``batch_too_large``) for a batch of more than :data:`MAX_BATCH` entries."""
        if len(entries) > MAX_BATCH:
            raise ValidationFailed(
                f"a batch holds at most {MAX_BATCH} {self._noun}s", code="batch_too_large"
            )

    def item(self, entry: Any) -> Item:
        """``entry`` as an item; a :class:`ValidationFailed` (the item's error in the
        batch's answer) when it is not a valid one."""
        try:
            return self._adapter.validate_python(entry)
        except ValidationError as exc:
            raise ValidationFailed(
                f"the {self._noun} is not valid", details=describe_validation(exc.errors())
            ) from exc


_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def utc_timestamp(value: datetime) -> datetime:
    """``value`` in UTC; ``ValueError`` unless it has a zone and lies in 1970 to 9998.

    Every timestamp is stored in UTC, so an offset given by the client (``-05:00``) is
    applied here, once, and no store can drop it."""
    if value.tzinfo is None:
        raise ValueError("the timestamp needs a time zone (use RFC 3339, e.g. ...Z)")
    try:
        moment = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the timestamp is out of range (1970 to 9998)") from exc
    if not EARLIEST <= moment < LATEST:
        raise ValueError("the timestamp is out of range (1970 to 9998)")
    return moment


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else utc_timestamp(value)


def _locale(value: str) -> str:
    if len(value) > 35 or not _LOCALE.match(value):
        raise ValueError("not a locale tag (e.g. fr or fr-CA)")
    return value


def _timezone(value: str) -> str:
    if len(value) > 64:
        raise ValueError("not an IANA time zone (too long)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


def _small_data(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > MAX_RECIPIENT_DATA:
        raise ValueError(f"data takes more than {MAX_RECIPIENT_DATA // 1024} KiB as JSON")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


def _text_only(value: Any) -> Any:
    if value is not None and not isinstance(value, (str, datetime)):
        raise ValueError("an RFC 3339 time as a string, e.g. 2026-11-24T08:00:00Z")
    return value


# An RFC 3339 string with its offset; numbers (epoch seconds) are refused.
Rfc3339 = Annotated[datetime, BeforeValidator(_text_only), AfterValidator(_aware)]
Email = Annotated[str, AfterValidator(normal_email)]
Phone = Annotated[str, AfterValidator(normal_phone)]
Locale = Annotated[str, AfterValidator(_locale)]
TimeZone = Annotated[str, AfterValidator(_timezone)]


class To(Body):
    recipient_id: RecipientId | None = None
    recipient_ids: list[RecipientId] | None = Field(default=None, min_length=1, max_length=1000)
    topic: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> To:
        given = [f for f in ("recipient_id", "recipient_ids", "topic") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError("`to` takes exactly one of recipient_id, recipient_ids or topic")
        return self

    def recipients(self) -> list[str]:
        if self.recipient_id is not None:
            return [self.recipient_id]
        return list(dict.fromkeys(self.recipient_ids or []))


class NotificationIn(Body):
    model_config = example(
        {
            "template": "order_shipped",
            "to": {"recipient_id": "u-123"},
            "data": {"firstName": "Alex", "orderId": "ord_99482A"},
            "priority": "normal",
            "idempotency_key": "order-99482-shipped",
        }
    )

    template: Name | None = None
    workflow: Annotated[
        Name | None,
        Field(description="A workflow to run for each recipient, instead of a template."),
    ] = None
    cancellation_key: Annotated[
        str | None,
        StringConstraints(min_length=1, max_length=200),
        Field(description="With `workflow`: what `POST /v1/workflows/{key}/cancel` names."),
    ] = None
    to: To
    data: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    channels: list[Channel] | None = Field(default=None, min_length=1)
    send_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    idempotency_key: IdempotencyKey | None = None

    @model_validator(mode="after")
    def _template_or_workflow(self) -> NotificationIn:
        if (self.template is None) == (self.workflow is None):
            raise ValueError("a notification names exactly one of template or workflow")
        if self.workflow is None and self.cancellation_key is not None:
            raise ValueError("cancellation_key goes with workflow")
        if self.workflow is not None and self.channels is not None:
            raise ValueError("a workflow's steps name their channels: channels goes with template")
        return self


class NotificationBatchIn(Body):
    # Items are validated one by one, so that each is accepted or refused on its own.
    ITEMS: ClassVar[BatchItems[NotificationIn]] = BatchItems(NotificationIn, "notification")
    notifications: list[dict[str, Any]]


class PushToken(Body):
    platform: Literal["apns", "fcm"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class WebPushKeys(Body):
    p256dh: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    auth: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class WebPushSubscription(Body):
    endpoint: HttpUrl
    keys: WebPushKeys
    # As a browser's PushSubscription.toJSON() gives it (ms since the epoch, or null), so
    # that object can be stored as it is.
    expirationTime: int | None = Field(default=None, ge=0)


# A chat service's webhook URL: https, which the API checks against the deployment's
# settings (`http` only where private webhooks are allowed: :meth:`RecipientIn.plain_http`).
HttpsUrl = HttpUrl
SlackChannel = Annotated[str, StringConstraints(pattern=SLACK_CHANNEL)]
MattermostChannel = Annotated[str, StringConstraints(pattern=MATTERMOST_CHANNEL)]
TelegramChatId = Annotated[
    str, StringConstraints(pattern=TELEGRAM_CHAT), BeforeValidator(chat_id_text)
]


class SlackAddress(Body):
    """A Slack conversation: ``channel`` for a bot (`slack` provider), or an incoming
    webhook's ``webhook_url`` (`slack_webhook` provider); exactly one of them."""

    kind: Literal["slack"]
    channel: SlackChannel | None = None
    webhook_url: HttpsUrl | None = None

    @model_validator(mode="after")
    def _one(self) -> SlackAddress:
        if (self.channel is None) == (self.webhook_url is None):
            raise ValueError("a Slack address has a channel or a webhook_url (one of them)")
        return self


class TeamsAddress(Body):
    """A Microsoft Teams workflow (Power Automate) or incoming webhook URL."""

    kind: Literal["teams"]
    webhook_url: HttpsUrl


class DiscordAddress(Body):
    kind: Literal["discord"]
    webhook_url: HttpsUrl


class MattermostAddress(Body):
    kind: Literal["mattermost"]
    webhook_url: HttpsUrl
    channel: MattermostChannel | None = Field(
        default=None, description="Overrides the webhook's channel, unless it is locked"
    )


class GoogleChatAddress(Body):
    kind: Literal["google_chat"]
    webhook_url: HttpsUrl


class TelegramAddress(Body):
    kind: Literal["telegram"]
    chat_id: TelegramChatId = Field(
        description="A chat's id (an integer, negative for groups) or a channel's @username"
    )


ChatAddress = Annotated[
    SlackAddress
    | TeamsAddress
    | DiscordAddress
    | MattermostAddress
    | GoogleChatAddress
    | TelegramAddress,
    Field(discriminator="kind"),
]


class RecipientIn(Body):
    model_config = example(
        {
            "email": "alex@example.com",
            "phone": "+14155550100",
            "locale": "fr-CA",
            "timezone": "America/Toronto",
            "data": {"firstName": "Alex"},
        }
    )

    email: Email | None = None
    phone: Phone | None = None
    locale: Locale | None = None
    timezone: TimeZone | None = None
    push_tokens: list[PushToken] = Field(default_factory=list, max_length=100)
    webpush: list[WebPushSubscription] = Field(default_factory=list, max_length=100)
    webhook_url: HttpUrl | None = None
    chat: list[ChatAddress] = Field(
        default_factory=list,
        max_length=20,
        description=(
            "Extension: chat addresses, each naming its service (`kind`): slack (`channel` "
            "or `webhook_url`), teams, discord, google_chat (`webhook_url`), mattermost "
            "(`webhook_url`, optional `channel`), telegram (`chat_id`). Webhook URLs are https."
        ),
    )
    whatsapp: Phone | None = Field(
        default=None,
        description=(
            "Extension: the recipient's WhatsApp number (E.164), when it is not `phone`; "
            "without it, the whatsapp channel sends to `phone`."
        ),
    )
    data: Annotated[dict[str, Any], AfterValidator(_small_data)] = Field(
        default_factory=dict, description="At most 64 KiB as JSON."
    )

    def plain_http(self) -> list[dict[str, str]]:
        """The chat webhook URLs that are not https, as validation details: refused unless
        the deployment allows private webhooks (a receiver on its own network)."""
        urls = ((i, getattr(address, "webhook_url", None)) for i, address in enumerate(self.chat))
        return [
            {"field": f"chat.{i}.webhook_url", "message": "a webhook URL must be https"}
            for i, url in urls
            if url is not None and url.scheme != "https"
        ]

    def to_row(self) -> dict[str, Any]:
        row = self.model_dump(mode="json")
        # A subscription keeps `expirationTime` only when the browser gave one.
        for subscription in row["webpush"]:
            if subscription.get("expirationTime") is None:
                subscription.pop("expirationTime", None)
        # A chat address keeps the fields it was given.
        row["chat"] = [
            {key: value for key, value in address.items() if value is not None}
            for address in row["chat"]
        ]
        return row


class RecipientBatchItem(RecipientIn):
    id: RecipientId


class RecipientBatchIn(Body):
    # Items are validated one by one, so that each is accepted or refused on its own.
    ITEMS: ClassVar[BatchItems[RecipientBatchItem]] = BatchItems(RecipientBatchItem, "recipient")
    recipients: list[Any]


class TemplateIn(Body):
    model_config = example(
        {
            "category": "transactional",
            "channels": {
                "email": {
                    "subject": "Your order {{ orderId }} shipped",
                    "html": "<p>Hello {{ firstName }}</p>",
                    "text": "Hello {{ firstName }}",
                },
                "sms": {"text": "Order {{ orderId }} shipped"},
            },
            "locales": {"fr": {"email": {"subject": "Commande {{ orderId }} partie"}}},
        }
    )

    category: Name = "transactional"
    channels: dict[Channel, dict[str, Any]] = Field(min_length=1)
    locales: dict[Locale, dict[Channel, dict[str, Any]]] = Field(default_factory=dict)
    # Critical notifications only: the channel to use when one has no healthy provider.
    fallbacks: dict[Channel, Channel] = Field(
        default_factory=dict,
        description=(
            "Extension: for critical notifications (critical priority or category), the "
            "channel to send by when a channel has no healthy provider, e.g. "
            '{"push": "sms"}. Both must be channels of the template.'
        ),
    )


_Text = Annotated[str, StringConstraints(max_length=2000)]


class WorkflowStepIn(Body):
    """A step as given; the rules between its fields are checked by domain/workflows.py."""

    id: Annotated[str, StringConstraints(max_length=100)]
    type: Annotated[str, StringConstraints(max_length=20)]
    if_: _Text | None = Field(default=None, alias="if")
    channel: Annotated[str, StringConstraints(max_length=20)] | None = None
    channels: list[Annotated[str, StringConstraints(max_length=20)]] | None = Field(
        default=None, max_length=10
    )
    mode: Annotated[str, StringConstraints(max_length=20)] | None = None
    template: Annotated[str, StringConstraints(max_length=200)] | None = None
    duration: Annotated[str, StringConstraints(max_length=20)] | None = None
    until: _Text | None = None
    window: Annotated[str, StringConstraints(max_length=20)] | None = None
    key: _Text | None = None
    limit: int | None = None


class WorkflowIn(Body):
    model_config = example(
        {
            "name": "Comment on your post",
            "category": "transactional",
            "steps": [
                {"id": "feed", "type": "channel", "channel": "inapp", "template": "new_comment"},
                {"id": "wait", "type": "delay", "duration": "15m"},
                {
                    "id": "mail",
                    "type": "channel",
                    "channel": "email",
                    "template": "new_comment",
                    "if": "not steps.feed.read",
                },
            ],
        }
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    category: Name | None = None
    steps: list[WorkflowStepIn] = Field(min_length=1, max_length=50)


CategoryName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME_PATTERN)]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_DURATION = re.compile(r"^([1-9]\d{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DIGEST_MIN_SECONDS = 60
DIGEST_MAX_SECONDS = 7 * 86400


def _clock(value: str) -> str:
    if not _CLOCK.match(value):
        raise ValueError("not a time of day as HH:MM between 00:00 and 23:59")
    return value


def duration_seconds(value: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h`` or ``7d``."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError("not a duration such as 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _digest_window(value: str) -> str:
    if not DIGEST_MIN_SECONDS <= duration_seconds(value) <= DIGEST_MAX_SECONDS:
        raise ValueError("a digest window lies between 1m and 7d")
    return value


class QuietHours(Body):
    """Hours in which non-critical deliveries wait. ``start`` after ``end`` spans midnight;
    without ``timezone`` the recipient's own time zone applies."""

    start: Annotated[str, AfterValidator(_clock)]
    end: Annotated[str, AfterValidator(_clock)]
    timezone: TimeZone | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need a start different from their end")
        return self


class PreferencesIn(Body):
    """A recipient's choices: channel-wide opt-outs, per-category ones, quiet hours."""

    channels: dict[Channel, bool] = Field(default_factory=dict)
    categories: dict[CategoryName, dict[Channel, bool]] = Field(
        default_factory=dict, max_length=1000
    )
    workflows: dict[Name, dict[Channel, bool]] = Field(
        default_factory=dict,
        max_length=1000,
        description="Opt-outs for one workflow's sends, by workflow key (the most specific)",
    )
    quiet_hours: QuietHours | None = None
    snooze_until: Rfc3339 | None = Field(
        default=None,
        description=(
            "Extension: a temporary opt-out of every non-critical send until this RFC 3339 "
            "time (null or absent: none). What arrives meanwhile is deferred to the snooze's "
            "end, or dropped in a category with `during_snooze: drop`; the snooze ends by "
            "itself."
        ),
    )


# A digest key names a field of the notification's data: `project` or `project.id`.
DigestKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"),
]


class DigestIn(Body):
    window: Annotated[str, AfterValidator(_digest_window)]
    key: DigestKey | None = Field(
        default=None,
        description=(
            "A field of the notification's data (a dotted path for a nested one) whose value "
            "splits a recipient's digests: one window per value. Absent: one per channel."
        ),
    )


class TrackingIn(Body):
    opens: bool = Field(
        default=False,
        description="Add a 1x1 image to the HTML of this category's email: `delivery.opened`",
    )
    clicks: bool = Field(
        default=False,
        description="Send the http(s) links of the HTML through a signed redirect that records "
        "`delivery.clicked`",
    )


class CategoryIn(Body):
    critical: bool = False
    default_channels: list[Channel] | None = Field(default=None, min_length=1)
    digest: DigestIn | None = None
    max_per_hour: int | None = Field(default=None, ge=1, le=1_000_000)
    max_per_day: int | None = Field(default=None, ge=1, le=1_000_000)
    overflow: Literal["drop", "defer", "digest"] = Field(
        default="drop",
        description=(
            "What becomes of a notification over `max_per_hour` or `max_per_day`: `drop` "
            "(suppressed, `rate_limited`), `defer` (scheduled for the first free slot within "
            "7 days, else dropped) or `digest` (held for the category's digest, which it "
            "then needs; the digest then holds only what is over a cap)."
        ),
    )
    during_snooze: Literal["defer", "drop"] = Field(
        default="defer",
        description="What arrives while a recipient is snoozed: deferred to the end, or dropped.",
    )
    tracking: TrackingIn = Field(
        default_factory=TrackingIn,
        description="Open and click tracking of this category's email (docs/tracking.md); "
        "both off by default.",
    )

    @model_validator(mode="after")
    def _overflow_needs_digest(self) -> CategoryIn:
        if self.overflow == "digest" and self.digest is None:
            raise ValueError("`overflow: digest` needs the category's `digest`")
        if self.overflow == "digest" and not (self.max_per_hour or self.max_per_day):
            raise ValueError("`overflow: digest` needs `max_per_hour` or `max_per_day`")
        return self


class LayoutPartsIn(Body):
    """A locale's variant of a layout: either part, or both, replacing the layout's own."""

    html: str | None = None
    text: str | None = None


class LayoutIn(Body):
    model_config = example(
        {
            "html": '<table><tr><td><img src="{{ brand.logo_url }}" alt="{{ brand.name }}">'
            "</td></tr><tr><td>{{ content }}</td></tr>"
            "<tr><td>{{ brand.address }}</td></tr></table>",
            "text": "{{ content }}\n\n--\n{{ brand.name }}, {{ brand.address }}",
            "locales": {"de": {"text": "{{ content }}\n\n--\n{{ brand.name }} (Impressum)"}},
            "default": True,
        }
    )

    html: str = Field(
        min_length=1,
        description="The HTML around a template's email; prints `{{ content }}` where the "
        "template's rendered HTML goes (inserted as markup; the layout's own variables are "
        "escaped).",
    )
    text: str = Field(
        min_length=1, description="The text around the email's text part, with `{{ content }}`."
    )
    locales: dict[Locale, LayoutPartsIn] = Field(
        default_factory=dict,
        max_length=200,
        description="Per-locale variants, chosen as a template's locale is (`fr-CA` → `fr` → "
        "the layout's own).",
    )
    default: bool | None = Field(
        default=None,
        description="true: the tenant's default layout from now on (for templates that name "
        "none); false: no longer the default, if it was; absent: unchanged.",
    )

    def content(self) -> dict[str, Any]:
        locales = {
            locale: parts.model_dump(exclude_none=True) for locale, parts in self.locales.items()
        }
        return {"html": self.html, "text": self.text, "locales": locales}


MAX_BRAND = 16 * 1024
_BRAND_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_COLOUR = re.compile(r"^#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})$")
BrandKey = Annotated[str, StringConstraints(pattern=_BRAND_KEY.pattern)]
Colour = Annotated[str, StringConstraints(pattern=_COLOUR.pattern)]


class BrandIn(BaseModel):
    """The tenant's brand: ``brand.*`` in every template and layout. The fields named here
    are checked; any other key (a name a template can write as ``brand.<key>``) is kept as
    given. At most 16 KiB as JSON."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "name": "Acme",
                    "logo_url": "https://cdn.acme.example/logo.png",
                    "colors": {"primary": "#0a66c2", "text": "#222222"},
                    "address": "Acme Inc., 1 Main St, Springfield",
                    "support_email": "help@acme.example",
                }
            ]
        },
    )

    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    logo_url: HttpUrl | None = Field(default=None, description="An http(s) URL")
    colors: dict[BrandKey, Colour] | None = Field(
        default=None, max_length=50, description="CSS hex colours by name, e.g. `#0a66c2`"
    )
    address: Annotated[str, StringConstraints(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _small_with_usable_keys(self) -> BrandIn:
        for key in self.model_extra or {}:
            if not _BRAND_KEY.match(key):
                raise ValueError(
                    f"brand key {key[:70]!r} is not a name (letters, digits, _; 64 at most)"
                )
        if len(orjson.dumps(self.stored())) > MAX_BRAND:
            raise ValueError(f"the brand takes more than {MAX_BRAND // 1024} KiB as JSON")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
