"""Settings that are parsed, not just read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clarion.config import Settings, parse_duration


def test_durations() -> None:
    assert [parse_duration(t) for t in ("500ms", "5s", "2m", "1h", "1d", "3")] == [
        0.5,
        5.0,
        120.0,
        3600.0,
        86400.0,
        3.0,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_a_channel_may_have_its_own_retry_schedule() -> None:
    settings = Settings(retry_schedule="1s,5s", channel_retry_schedules="sms=5s,1m ; push=1s")
    assert settings.retry_delays_for("sms") == [5.0, 60.0]
    assert settings.retry_delays_for("push") == [1.0]
    assert settings.retry_delays_for("email") == [1.0, 5.0]


@pytest.mark.parametrize("value", ["pigeon=1s", "sms", "sms=soon", "sms=1s;email=x"])
def test_a_bad_channel_schedule_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(channel_retry_schedules=value)


@pytest.mark.parametrize("value", [0.0, 0.5, -1.0])
def test_a_workflow_run_lease_under_a_second_is_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        Settings(workflow_run_lease=value)
