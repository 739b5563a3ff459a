"""Cron due times in a zone (domain/cron.py): clock changes, windows, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clarion.domain.cron import Cron, CronError, next_look

PARIS = "Europe/Paris"


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        # 02:30 does not exist on 28 March 2027 in Paris: it runs at 03:00 CEST (01:00 UTC).
        (
            _utc(2027, 3, 27, 12),
            _utc(2027, 3, 29, 12),
            [_utc(2027, 3, 28, 1), _utc(2027, 3, 29, 0, 30)],
        ),
        # 02:30 happens twice on 31 October 2027: it runs once, at the first (00:30 UTC).
        (
            _utc(2027, 10, 30, 12),
            _utc(2027, 11, 1, 12),
            [_utc(2027, 10, 31, 0, 30), _utc(2027, 11, 1, 1, 30)],
        ),
    ],
)
def test_skipped_and_repeated_times_follow_debian_cron(
    after: datetime, until: datetime, expected: list[datetime]
) -> None:
    assert Cron.parse("30 2 * * *").between(PARIS, after, until, 10) == expected


def test_between_keeps_the_latest_when_bounded() -> None:
    cron = Cron.parse("*/10 * * * *")
    got = cron.between("UTC", _utc(2027, 1, 1), _utc(2027, 1, 1, 1), 3)
    assert got == [_utc(2027, 1, 1, 0, 40), _utc(2027, 1, 1, 0, 50), _utc(2027, 1, 1, 1)]


def test_next_look_respects_the_window_and_the_rescan() -> None:
    cron = Cron.parse("0 9 * * MON-FRI")
    friday = _utc(2027, 6, 4, 14)  # after 09:00 in New York (13:00 UTC)
    monday = _utc(2027, 6, 7, 7)  # 09:00 in Paris
    zones = [PARIS, "America/New_York"]
    assert next_look(cron, zones, friday, starts_at=None, ends_at=None, rescan=None) == monday
    soon = friday + timedelta(minutes=15)
    assert next_look(cron, zones, friday, starts_at=None, ends_at=None, rescan=soon) == soon
    ended = dict(starts_at=None, ends_at=_utc(2027, 6, 5))
    assert next_look(cron, zones, friday, rescan=None, **ended) is None
    later = _utc(2027, 7, 1)
    assert next_look(cron, zones, friday, starts_at=later, ends_at=None, rescan=None) == _utc(
        2027, 7, 1, 7
    )
    # A "recipient" schedule with no zones yet looks again at the rescan.
    assert next_look(cron, [], friday, starts_at=None, ends_at=None, rescan=soon) == soon


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "0 0 9 * * MON",
        "60 * * * *",
        "* 24 * * *",
        "0 0 31 2 *",
        "0 0 * * FUN",
        "x" * 101,
    ],
)
def test_bad_expressions_are_refused(expression: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expression)


def test_expressions_are_normalised() -> None:
    assert Cron.parse("  0   9 * *  MON-FRI ").expression == "0 9 * * MON-FRI"
