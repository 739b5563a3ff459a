"""Request bodies, validated. Shapes follow the published API contract."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    model_validator,
)

from clarion.domain.models import Channel, Priority

MAX_BATCH = 1000

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
]
RecipientId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255)]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9]\d{1,14}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("the timestamp needs a time zone (use RFC 3339, e.g. ...Z)")
    return value


def _email(value: str) -> str:
    if len(value) > 320 or not _EMAIL.match(value):
        raise ValueError("not an email address")
    return value


def _phone(value: str) -> str:
    if not _PHONE.match(value):
        raise ValueError("not a phone number in E.164 form (e.g. +14155550100)")
    return value


def _locale(value: str) -> str:
    if not _LOCALE.match(value):
        raise ValueError("not a locale tag (e.g. fr or fr-CA)")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class To(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: Name
    to: To
    data: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    channels: list[Channel] | None = Field(default=None, min_length=1)
    send_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    idempotency_key: IdempotencyKey | None = None


class NotificationBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Items are validated one by one, so that each is accepted or refused on its own.
    notifications: list[dict[str, Any]]


class PushToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: Literal["apns", "fcm"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class WebPushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p256dh: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    auth: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class WebPushSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: HttpUrl
    keys: WebPushKeys


class RecipientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, AfterValidator(_email)] | None = None
    phone: Annotated[str, AfterValidator(_phone)] | None = None
    locale: Annotated[str, AfterValidator(_locale)] | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] | None = None
    push_tokens: list[PushToken] = Field(default_factory=list, max_length=100)
    webpush: list[WebPushSubscription] = Field(default_factory=list, max_length=100)
    webhook_url: HttpUrl | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = self.model_dump(mode="json")
        return row


class RecipientBatchItem(RecipientIn):
    id: RecipientId


class RecipientBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[dict[str, Any]]


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Name = "transactional"
    channels: dict[Channel, dict[str, Any]] = Field(min_length=1)
    locales: dict[Annotated[str, AfterValidator(_locale)], dict[Channel, dict[str, Any]]] = Field(
        default_factory=dict
    )
