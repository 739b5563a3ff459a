"""``/v1/schedules``: the request body, checked at the edge, and the documented answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from clarion.api.outputs import Out, Paged
from clarion.api.schemas import AwareDatetime, Body, NotificationIn, example
from clarion.domain.cron import RECIPIENT, Cron, CronError
from clarion.domain.cron import zone as zone_info


def _cron(value: str) -> str:
    try:
        return Cron.parse(value).expression
    except CronError as exc:
        raise ValueError(str(exc)) from exc


def _zone(value: str) -> str:
    if value == RECIPIENT:
        return value
    if len(value) > 64:
        raise ValueError("not an IANA time zone (too long)")
    zone_info(value)  # ValueError names the unknown zone
    return value


class ScheduleIn(Body):
    model_config = example(
        {
            "cron": "0 9 * * MON-FRI",
            "timezone": "recipient",
            "notification": {
                "template": "daily_summary",
                "to": {"topic": "daily-summary"},
                "data": {"edition": "weekday"},
            },
            "enabled": True,
        }
    )

    cron: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_cron)] = Field(
        description="Five fields: minute hour day-of-month month day-of-week (names such as "
        "MON-FRI and JAN allowed), as Debian's cron reads them"
    )
    timezone: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_zone)] = Field(
        default="UTC",
        description='An IANA zone, or "recipient": the cron time in each recipient\'s own '
        "zone (UTC for recipients without one)",
    )
    notification: NotificationIn = Field(
        description="A notification body as POST /v1/notifications takes it, without "
        "send_at or idempotency_key (each run sets its own)"
    )
    enabled: bool = True
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleIn:
        if self.notification.send_at is not None:
            raise ValueError("a scheduled notification takes no send_at: the cron says when")
        if self.notification.idempotency_key is not None:
            raise ValueError("a scheduled notification takes no idempotency_key: each run has one")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must come after starts_at")
        return self

    def stored_notification(self) -> dict[str, Any]:
        return self.notification.model_dump(mode="json", exclude_none=True)


class ScheduleOut(Out):
    name: str
    cron: str
    timezone: str
    notification: dict[str, Any]
    enabled: bool
    starts_at: datetime | None
    ends_at: datetime | None
    next_run_at: datetime | None = Field(
        description="When the scheduler next looks at it: its next due time (for a "
        '"recipient" schedule, no later than the next look for new zones); null when '
        "disabled or past ends_at"
    )
    created_at: datetime
    updated_at: datetime


class SchedulePage(Paged[ScheduleOut]): ...


class ScheduleRunOut(Out):
    id: str
    due_at: datetime
    zone: str = Field(description="The zone whose cron time this run is")
    status: str = Field(description="pending | running | completed | failed | skipped")
    fired_at: datetime | None
    finished_at: datetime | None
    notification_id: str | None = Field(description="The run's first notification")
    notification_ids: list[str]
    recipients: int = Field(description="Recipients listed by the run's notifications")
    error: str | None


class ScheduleRunPage(Paged[ScheduleRunOut]): ...
