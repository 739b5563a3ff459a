"""Preferences: opt-outs, critical overrides and quiet hours across midnight and DST."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clarion.domain.models import Channel, Priority
from clarion.domain.preferences import (
    EMPTY,
    INTERRUPTIVE,
    OPTED_OUT,
    CategoryPolicy,
    Decision,
    Preferences,
    QuietHours,
    candidate_channels,
    decide,
    quiet_window_end,
    zone_for,
)

UTC = dt.UTC
MARKETING = CategoryPolicy("marketing")
SECURITY = CategoryPolicy("security", critical=True)
ALL_CHANNELS = tuple(Channel)


def local(when: str, zone: str, *, fold: int = 0) -> dt.datetime:
    """An aware local time in the zone's own tzinfo, so every case also checks UTC comparison."""
    return dt.datetime.fromisoformat(when).replace(tzinfo=ZoneInfo(zone), fold=fold)


def utc(when: str) -> dt.datetime:
    return dt.datetime.fromisoformat(when).replace(tzinfo=UTC)


def quiet(start: str, end: str, zone: str | None = None) -> dict[str, Any]:
    hours: dict[str, Any] = {"start": start, "end": end}
    if zone is not None:
        hours["timezone"] = zone
    return {"quiet_hours": hours}


NIGHT_PARIS = quiet("22:00", "07:00", "Europe/Paris")
NIGHT_NY = quiet("22:00", "07:00", "America/New_York")


def case(
    name: str,
    prefs: dict[str, Any],
    now: dt.datetime,
    channels: tuple[str, ...],
    *,
    send: tuple[str, ...] = (),
    defer: dict[str, dt.datetime] | None = None,
    suppress: dict[str, str] | None = None,
    recipient_zone: str | None = None,
    category: CategoryPolicy = MARKETING,
    priority: str = "normal",
) -> Any:
    expected = (send, defer or {}, suppress or {})
    return pytest.param(prefs, recipient_zone, category, priority, now, channels, expected, id=name)


NOON = utc("2026-01-15 12:00")
PARIS_2330 = local("2026-01-15 23:30", "Europe/Paris")
PARIS_0700_NEXT = utc("2026-01-16 06:00")

CASES = [
    # Opt-outs.
    case(
        "opted-out-of-marketing-email-push-still-goes",
        {"categories": {"marketing": {"email": False}}},
        NOON,
        ("email", "push"),
        send=("push",),
        suppress={"email": OPTED_OUT},
    ),
    case(
        "category-true-wins-over-channel-wide-false",
        {"channels": {"sms": False}, "categories": {"marketing": {"sms": True}}},
        NOON,
        ("sms", "email"),
        send=("sms", "email"),
    ),
    case(
        "category-false-wins-over-channel-wide-true",
        {"channels": {"email": True}, "categories": {"marketing": {"email": False}}},
        NOON,
        ("email",),
        suppress={"email": OPTED_OUT},
    ),
    case(
        "channel-wide-opt-out-applies-without-category-setting",
        {"channels": {"sms": False}, "categories": {"marketing": {"email": True}}},
        NOON,
        ("sms", "email"),
        send=("email",),
        suppress={"sms": OPTED_OUT},
    ),
    case(
        "other-category-setting-does-not-apply",
        {"categories": {"transactional": {"email": False}}},
        NOON,
        ("email",),
        send=("email",),
    ),
    # Quiet hours, Paris winter time (UTC+1).
    case(
        "paris-2330-deferred-to-0700-next-day",
        NIGHT_PARIS,
        PARIS_2330,
        ("email", "push"),
        defer={"email": PARIS_0700_NEXT, "push": PARIS_0700_NEXT},
    ),
    case(
        "paris-0659-deferred-to-0700-same-day",
        NIGHT_PARIS,
        local("2026-01-16 06:59", "Europe/Paris"),
        ("sms",),
        defer={"sms": PARIS_0700_NEXT},
    ),
    case(
        "paris-0700-window-over-sent-now",
        NIGHT_PARIS,
        local("2026-01-16 07:00", "Europe/Paris"),
        ("sms",),
        send=("sms",),
    ),
    case(
        "paris-2159-before-window-sent-now",
        NIGHT_PARIS,
        local("2026-01-15 21:59", "Europe/Paris"),
        ("sms",),
        send=("sms",),
    ),
    case(
        "paris-same-day-window-in-summer-time",
        quiet("13:00", "14:00", "Europe/Paris"),
        local("2026-07-01 13:30", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-07-01 12:00")},
    ),
    case(
        "start-equal-to-end-is-no-window",
        quiet("22:00", "22:00", "Europe/Paris"),
        PARIS_2330,
        ("email",),
        send=("email",),
    ),
    # Overrides and channels quiet hours leave alone.
    case(
        "critical-category-ignores-quiet-hours-and-opt-out",
        {**NIGHT_PARIS, "categories": {"security": {"email": False}}},
        PARIS_2330,
        ("email", "sms"),
        send=("email", "sms"),
        category=SECURITY,
    ),
    case(
        "critical-priority-ignores-quiet-hours-and-opt-outs",
        {**NIGHT_PARIS, "channels": {"sms": False}, "categories": {"marketing": {"email": False}}},
        PARIS_2330,
        ("email", "sms"),
        send=("email", "sms"),
        priority="critical",
    ),
    case(
        "inapp-and-webhook-never-deferred",
        NIGHT_PARIS,
        PARIS_2330,
        ("email", "inapp", "webhook", "webpush"),
        send=("inapp", "webhook"),
        defer={"email": PARIS_0700_NEXT, "webpush": PARIS_0700_NEXT},
        priority="high",
    ),
    case(
        "opted-out-during-quiet-hours-suppressed-not-deferred",
        {**NIGHT_PARIS, "categories": {"marketing": {"push": False}}},
        PARIS_2330,
        ("push",),
        suppress={"push": OPTED_OUT},
    ),
    # Which zone the window is read in.
    case(
        "no-quiet-zone-uses-recipient-zone",
        quiet("22:00", "07:00"),
        local("2026-01-15 23:00", "America/New_York"),
        ("email",),
        defer={"email": utc("2026-01-16 12:00")},
        recipient_zone="America/New_York",
    ),
    case(
        "no-zone-anywhere-uses-utc",
        quiet("22:00", "07:00"),
        utc("2026-01-15 23:00"),
        ("email",),
        defer={"email": utc("2026-01-16 07:00")},
    ),
    case(
        "unknown-zone-falls-back-to-utc",
        quiet("22:00", "07:00", "Mars/Olympus_Mons"),
        utc("2026-01-15 23:00"),
        ("email",),
        defer={"email": utc("2026-01-16 07:00")},
        recipient_zone="Europe/Paris",
    ),
    # Paris clock changes: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00.
    case(
        "paris-spring-forward-end-in-gap-deferred-to-0300",
        quiet("01:00", "02:30", "Europe/Paris"),
        local("2026-03-29 01:30", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-03-29 01:00")},
    ),
    case(
        "paris-fall-back-deferred-to-first-0230",
        quiet("00:00", "02:30", "Europe/Paris"),
        local("2026-10-25 00:30", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-10-25 00:30")},
    ),
    case(
        "paris-fall-back-now-in-repeated-hour-deferred-to-second-0230",
        quiet("00:00", "02:30", "Europe/Paris"),
        local("2026-10-25 02:10", "Europe/Paris", fold=1),
        ("email",),
        defer={"email": utc("2026-10-25 01:30")},
    ),
    case(
        "paris-overnight-window-on-spring-forward-night",
        NIGHT_PARIS,
        local("2026-03-28 23:30", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-03-29 05:00")},
    ),
    case(
        "paris-overnight-window-on-fall-back-night",
        NIGHT_PARIS,
        local("2026-10-24 23:30", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-10-25 06:00")},
    ),
    case(
        "paris-free-slot-swallowed-by-gap-waits-a-day",
        quiet("02:40", "02:20", "Europe/Paris"),
        local("2026-03-28 23:00", "Europe/Paris"),
        ("email",),
        defer={"email": utc("2026-03-30 00:20")},
    ),
    # New York: 2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00.
    case(
        "new-york-overnight-window",
        NIGHT_NY,
        local("2026-01-15 23:00", "America/New_York"),
        ("sms",),
        defer={"sms": utc("2026-01-16 12:00")},
    ),
    case(
        "new-york-overnight-window-on-spring-forward-night",
        NIGHT_NY,
        local("2026-03-07 23:00", "America/New_York"),
        ("sms",),
        defer={"sms": utc("2026-03-08 11:00")},
    ),
    case(
        "new-york-overnight-window-on-fall-back-night",
        NIGHT_NY,
        local("2026-10-31 23:00", "America/New_York"),
        ("sms",),
        defer={"sms": utc("2026-11-01 12:00")},
    ),
    case(
        "new-york-end-in-gap-deferred-to-0300",
        quiet("01:00", "02:30", "America/New_York"),
        local("2026-03-08 01:15", "America/New_York"),
        ("sms",),
        defer={"sms": utc("2026-03-08 07:00")},
    ),
    case(
        "new-york-fall-back-first-pass",
        quiet("01:00", "01:45", "America/New_York"),
        local("2026-11-01 01:20", "America/New_York"),
        ("sms",),
        defer={"sms": utc("2026-11-01 05:45")},
    ),
    case(
        "new-york-fall-back-second-pass",
        quiet("01:00", "01:45", "America/New_York"),
        local("2026-11-01 01:20", "America/New_York", fold=1),
        ("sms",),
        defer={"sms": utc("2026-11-01 06:45")},
    ),
    # Odd clocks: a 30-minute change, and Chile's change at midnight.
    case(
        "lord-howe-half-hour-gap-deferred-to-0230",
        quiet("01:00", "02:15", "Australia/Lord_Howe"),
        local("2026-10-04 01:30", "Australia/Lord_Howe"),
        ("push",),
        defer={"push": utc("2026-10-03 15:30")},
    ),
    case(
        "santiago-midnight-gap-deferred-to-0100",
        quiet("22:00", "00:30", "America/Santiago"),
        local("2026-09-05 23:00", "America/Santiago"),
        ("push",),
        defer={"push": utc("2026-09-06 04:00")},
    ),
    case(
        "santiago-repeated-hour-window-ends-on-second-pass",
        quiet("23:10", "23:05", "America/Santiago"),
        local("2026-04-04 23:20", "America/Santiago"),
        ("push",),
        defer={"push": utc("2026-04-05 03:05")},
    ),
]


@pytest.mark.parametrize(
    ("prefs", "recipient_zone", "category", "priority", "now", "channels", "expected"), CASES
)
def test_decide(
    prefs: dict[str, Any],
    recipient_zone: str | None,
    category: CategoryPolicy,
    priority: str,
    now: dt.datetime,
    channels: tuple[str, ...],
    expected: tuple[tuple[str, ...], dict[str, dt.datetime], dict[str, str]],
) -> None:
    decision = decide(
        channels=channels,
        preferences=Preferences.from_json(prefs),
        recipient_timezone=recipient_zone,
        category=category,
        priority=priority,
        now=now,
    )
    assert (decision.send_now, dict(decision.deferred), dict(decision.suppressed)) == expected
    for instant in decision.deferred.values():
        assert instant.tzinfo is UTC


def test_naive_now_is_refused() -> None:
    naive = dt.datetime(2026, 1, 15, 23, 30)
    hours = QuietHours(dt.time(22), dt.time(7))
    with pytest.raises(ValueError, match="aware"):
        quiet_window_end(naive, hours, ZoneInfo("UTC"))
    with pytest.raises(ValueError, match="aware"):
        decide(
            channels=["email"],
            preferences=EMPTY,
            recipient_timezone=None,
            category=MARKETING,
            priority="normal",
            now=naive,
        )


def test_duplicate_channels_are_decided_once() -> None:
    decision = decide(
        channels=["email", "sms", "email"],
        preferences=EMPTY,
        recipient_timezone=None,
        category=MARKETING,
        priority="low",
        now=utc("2026-01-15 12:00"),
    )
    assert decision.send_now == ("email", "sms")


@pytest.mark.parametrize(
    ("requested", "category", "expected"),
    [
        pytest.param(None, MARKETING, ["email", "sms", "push"], id="all-template-channels"),
        pytest.param(["push", "email"], MARKETING, ["email", "push"], id="template-order-kept"),
        pytest.param(["webhook"], MARKETING, [], id="requested-not-in-template"),
        pytest.param(
            None,
            CategoryPolicy("marketing", default_channels=("push", "inapp")),
            ["push"],
            id="category-defaults-narrow",
        ),
        pytest.param(
            ["sms"],
            CategoryPolicy("marketing", default_channels=("push",)),
            ["sms"],
            id="request-beats-category-defaults",
        ),
    ],
)
def test_candidate_channels(
    requested: list[str] | None, category: CategoryPolicy, expected: list[str]
) -> None:
    assert candidate_channels(["email", "sms", "push"], requested, category) == expected


def test_json_shape_round_trips() -> None:
    api = {
        "channels": {"sms": False},
        "categories": {"marketing": {"email": False, "push": True}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
        "snooze_until": "2026-11-24T08:00:00Z",
        "workflows": {"new_comment": {"email": False}},
    }
    prefs = Preferences.from_json(api)
    assert prefs.snooze_until == dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC)
    assert prefs.quiet_hours == QuietHours(dt.time(22), dt.time(7), "Europe/Paris")
    assert prefs.to_json() == api
    assert Preferences.from_json(None) == EMPTY
    assert Preferences.from_json({}) == EMPTY
    assert EMPTY.to_json() == {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }
    bare = Preferences.from_json(quiet("22:00", "07:00"))
    assert bare.to_json()["quiet_hours"] == {"start": "22:00", "end": "07:00"}


def test_zone_for_prefers_quiet_zone_then_recipient_then_utc() -> None:
    assert zone_for(QuietHours(dt.time(1), dt.time(2), "Asia/Kolkata"), "Europe/Paris").key == (
        "Asia/Kolkata"
    )
    assert zone_for(QuietHours(dt.time(1), dt.time(2)), "Europe/Paris").key == "Europe/Paris"
    assert zone_for(QuietHours(dt.time(1), dt.time(2)), None).key == "UTC"
    assert zone_for(QuietHours(dt.time(1), dt.time(2), "../etc/passwd"), None).key == "UTC"


# --- properties ---------------------------------------------------------------------------

ZONES = (
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "UTC",
)
FIRST = dt.datetime(2020, 1, 1, tzinfo=UTC)
LAST = dt.datetime(2035, 12, 31, tzinfo=UTC)
SLACK = dt.timedelta(hours=26)


def _offset(instant: dt.datetime, zone: ZoneInfo) -> dt.timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _transitions(name: str) -> list[dt.datetime]:
    """Every UTC instant the zone's offset changes between FIRST and LAST, found by bisection."""
    zone = ZoneInfo(name)
    found = []
    step = dt.timedelta(hours=12)
    at = FIRST
    while at < LAST:
        low, high = at, at + step
        if _offset(low, zone) != _offset(high, zone):
            while high - low > dt.timedelta(seconds=1):
                middle = low + (high - low) / 2
                if _offset(middle, zone) == _offset(low, zone):
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        at += step
    return found


TRANSITIONS = {name: _transitions(name) for name in ZONES}
minutes_of_day = st.integers(0, 24 * 60 - 1)


def _wall(minutes: int) -> dt.time:
    return dt.time(minutes // 60 % 24, minutes % 60)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dt.datetime, QuietHours, str | None, ZoneInfo]:
    """A moment, quiet hours and where their zone comes from, often around a clock change."""
    name = draw(st.sampled_from(ZONES))
    zone = ZoneInfo(name)
    start = draw(minutes_of_day)
    end = draw(minutes_of_day)
    if TRANSITIONS[name] and draw(st.booleans()):
        pivot = draw(st.sampled_from(TRANSITIONS[name]))
        now = pivot + dt.timedelta(minutes=draw(st.integers(-26 * 60, 26 * 60)))
        # Put the window's end next to the wall time the clock changes at.
        before = pivot.replace(tzinfo=None) + (
            _offset(pivot - dt.timedelta(seconds=1), zone) or dt.timedelta()
        )
        if draw(st.booleans()):
            end = before.hour * 60 + before.minute + draw(st.integers(-90, 90))
    else:
        now = draw(st.datetimes(FIRST.replace(tzinfo=None), LAST.replace(tzinfo=None)))
        now = now.replace(tzinfo=UTC)
    if draw(st.booleans()):
        now = now.astimezone(zone)  # same tzinfo object as the window's zone
    if draw(st.booleans()):
        return now, QuietHours(_wall(start), _wall(end), name), None, zone
    return now, QuietHours(_wall(start), _wall(end), None), name, zone


flags = st.dictionaries(st.sampled_from(ALL_CHANNELS).map(str), st.booleans())
category_names = st.sampled_from(["marketing", "transactional", "security"])
policies = st.builds(CategoryPolicy, name=category_names, critical=st.booleans())
priorities = st.sampled_from(list(Priority)).map(str)
channel_lists = st.lists(st.sampled_from(ALL_CHANNELS).map(str), unique=True)


def _preferences(draw: st.DrawFn, hours: QuietHours | None) -> Preferences:
    categories = draw(st.dictionaries(category_names, flags))
    return Preferences(channels=draw(flags), categories=categories, quiet_hours=hours)


def _decide(
    prefs: Preferences, zone: str | None, category: CategoryPolicy, priority: str, now: dt.datetime
) -> Decision:
    return decide(
        channels=ALL_CHANNELS,
        preferences=prefs,
        recipient_timezone=zone,
        category=category,
        priority=priority,
        now=now,
    )


def _exists(day: dt.date, wall: dt.time, zone: ZoneInfo) -> bool:
    naive = dt.datetime.combine(day, wall)
    back = naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return back == naive


PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(data=st.data(), scenario=scenarios(), category=policies, priority=priorities)
def test_every_channel_lands_in_exactly_one_bucket(
    data: st.DataObject,
    scenario: tuple[dt.datetime, QuietHours, str | None, ZoneInfo],
    category: CategoryPolicy,
    priority: str,
) -> None:
    now, hours, recipient_zone, _ = scenario
    channels = data.draw(channel_lists)
    prefs = _preferences(data.draw, data.draw(st.sampled_from([hours, None])))
    decision = decide(
        channels=channels,
        preferences=prefs,
        recipient_timezone=recipient_zone,
        category=category,
        priority=priority,
        now=now,
    )
    buckets = [set(decision.send_now), set(decision.deferred), set(decision.suppressed)]
    assert sum(len(b) for b in buckets) == len(channels)
    assert set().union(*buckets) == set(channels)
    assert len(decision.send_now) == len(set(decision.send_now))
    assert all(reason == OPTED_OUT for reason in decision.suppressed.values())
    if category.critical or priority == "critical":
        assert decision.send_now == tuple(channels)


@PROPERTY
@given(data=st.data(), scenario=scenarios(), category=policies)
def test_opt_outs_are_suppressed_never_deferred(
    data: st.DataObject,
    scenario: tuple[dt.datetime, QuietHours, str | None, ZoneInfo],
    category: CategoryPolicy,
) -> None:
    now, hours, recipient_zone, zone = scenario
    prefs = _preferences(data.draw, hours)
    decision = _decide(prefs, recipient_zone, category, "normal", now)
    until = quiet_window_end(now, hours, zone)
    for channel in ALL_CHANNELS:
        allowed = prefs.allows(category.name, channel)
        if category.critical:
            assert channel in decision.send_now
        elif not allowed:
            assert decision.suppressed.get(channel) == OPTED_OUT
        elif until is not None and channel in INTERRUPTIVE:
            assert decision.deferred[channel] == until
        else:
            assert channel in decision.send_now


@PROPERTY
@given(scenario=scenarios())
def test_quiet_window_ends_after_now_at_the_end_wall_time(
    scenario: tuple[dt.datetime, QuietHours, str | None, ZoneInfo],
) -> None:
    now, hours, recipient_zone, zone = scenario
    until = quiet_window_end(now, hours, zone)
    inside = hours.contains(now.astimezone(zone).time())
    prefs = Preferences(channels={}, categories={}, quiet_hours=hours)
    decision = _decide(prefs, recipient_zone, MARKETING, "normal", now)
    if until is None:
        assert not inside
        assert not decision.deferred
        return
    assert inside
    assert set(decision.deferred) == INTERRUPTIVE
    assert until.tzinfo is UTC
    assert until > now
    at = until.astimezone(zone)
    if at.time() != hours.end:
        # The end wall time was skipped by a clock change: the window ends at the jump.
        assert not _exists(at.date(), hours.end, zone)
        assert _offset(until - dt.timedelta(seconds=1), zone) != _offset(until, zone)
        just_before = (until - dt.timedelta(seconds=1)).astimezone(zone).replace(tzinfo=None)
        nominal = dt.datetime.combine(at.date(), hours.end)
        assert just_before < nominal < at.replace(tzinfo=None)
    if until - now > SLACK:
        # Only when a jump swallowed the whole free slot between end and start that day.
        today = now.astimezone(zone).date()
        days = (today, today + dt.timedelta(days=1))
        assert hours.start > hours.end
        assert any(not _exists(day, hours.end, zone) for day in days)
    # At the end of the window the recipient is outside it: deciding again sends now.
    assert quiet_window_end(until, hours, zone) is None
    again = _decide(prefs, recipient_zone, MARKETING, "normal", until)
    assert set(again.send_now) == set(ALL_CHANNELS)


@PROPERTY
@given(scenario=scenarios())
def test_deferral_is_unaffected_by_the_zone_now_is_given_in(
    scenario: tuple[dt.datetime, QuietHours, str | None, ZoneInfo],
) -> None:
    now, hours, _, zone = scenario
    expected = quiet_window_end(now.astimezone(UTC), hours, zone)
    assert quiet_window_end(now.astimezone(zone), hours, zone) == expected
    shifted = now.astimezone(dt.timezone(dt.timedelta(hours=-9, minutes=-30)))
    assert quiet_window_end(shifted, hours, zone) == expected


hours_strategy = st.builds(
    QuietHours,
    start=minutes_of_day.map(_wall),
    end=minutes_of_day.map(_wall),
    timezone=st.sampled_from([*ZONES, None]),
)


@PROPERTY
@given(data=st.data())
def test_json_round_trip(data: st.DataObject) -> None:
    prefs = _preferences(data.draw, data.draw(st.one_of(st.none(), hours_strategy)))
    assert Preferences.from_json(prefs.to_json()) == prefs


DIGESTED = CategoryPolicy("marketing", digest_window=3600)
DROPPING = CategoryPolicy("marketing", during_snooze="drop")


def _decide_all(
    prefs: dict[str, Any],
    now: dt.datetime,
    *,
    category: CategoryPolicy = MARKETING,
    priority: str = "normal",
    digestible: tuple[str, ...] = (),
    zone: str | None = None,
) -> Decision:
    return decide(
        channels=("email", "inapp", "webhook"),
        preferences=Preferences.from_json(prefs),
        recipient_timezone=zone,
        category=category,
        priority=priority,
        now=now,
        digestible=digestible,
    )


def test_snooze_defers_every_channel_to_its_end_then_ends_by_itself() -> None:
    until = "2026-01-15T18:00:00Z"
    decision = _decide_all({"snooze_until": until}, NOON)
    assert decision.send_now == ()
    assert dict(decision.deferred) == dict.fromkeys(
        ("email", "inapp", "webhook"), utc("2026-01-15 18:00")
    )
    assert dict(decision.deferred_for) == dict.fromkeys(("email", "inapp", "webhook"), "snoozed")
    # Once its time has come, nothing of it is left.
    later = _decide_all({"snooze_until": until}, utc("2026-01-15 18:00"))
    assert later.send_now == ("email", "inapp", "webhook")


def test_snooze_ending_in_quiet_hours_waits_for_their_end_on_channels_that_interrupt() -> None:
    prefs = {"snooze_until": "2026-01-15T22:30:00Z", **quiet("22:00", "07:00", "UTC")}
    decision = _decide_all(prefs, NOON)
    assert decision.deferred["email"] == utc("2026-01-16 07:00")
    assert decision.deferred["inapp"] == utc("2026-01-15 22:30")


def test_snooze_drop_opt_out_and_critical() -> None:
    snoozed = {"snooze_until": "2026-01-15T18:00:00Z"}
    dropped = _decide_all(snoozed, NOON, category=DROPPING)
    assert dict(dropped.suppressed) == dict.fromkeys(("email", "inapp", "webhook"), "snoozed")
    opted = _decide_all({**snoozed, "channels": {"email": False}}, NOON, category=DROPPING)
    assert opted.suppressed["email"] == OPTED_OUT
    for critical in (
        _decide_all(snoozed, NOON, priority=Priority.CRITICAL),
        _decide_all(snoozed, NOON, category=CategoryPolicy("security", critical=True)),
    ):
        assert critical.send_now == ("email", "inapp", "webhook")


def test_digest_holds_digestible_channels_unless_critical() -> None:
    held = _decide_all({}, NOON, category=DIGESTED, digestible=("email", "inapp"))
    assert held.held == ("email", "inapp")
    assert held.send_now == ("webhook",)
    # No digest on the category: nothing held whatever the template offers.
    assert _decide_all({}, NOON, digestible=("email",)).held == ()
    critical = _decide_all({}, NOON, category=DIGESTED, digestible=("email",), priority="critical")
    assert critical.held == ()
    assert "email" in critical.send_now
    # Opted out is never held; snoozed (defer) is held, the digest itself waits for the end.
    opted = _decide_all(
        {"channels": {"email": False}}, NOON, category=DIGESTED, digestible=("email",)
    )
    assert opted.suppressed == {"email": OPTED_OUT}
    assert opted.held == ()
    snoozed = _decide_all(
        {"snooze_until": "2026-01-15T18:00:00Z"}, NOON, category=DIGESTED, digestible=("email",)
    )
    assert snoozed.held == ("email",)
