"""A recipient's preferences: which channels they opted out of, and when not to interrupt them.

``decide`` is the one rule the planner applies per recipient: each candidate channel is sent
now, deferred to the end of the quiet window, or suppressed. Quiet hours defer, never drop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clarion.domain.models import Channel, Priority

UTC = dt.UTC
OPTED_OUT = "opted_out"

# Quiet hours protect a person's attention, so they hold back only the channels that buzz,
# ring or land in an inbox someone watches. An in-app inbox entry waits silently until the
# person looks, and a webhook is read by a machine: deferring those would only delay them.
INTERRUPTIVE: frozenset[str] = frozenset(
    {Channel.EMAIL, Channel.SMS, Channel.PUSH, Channel.WEBPUSH}
)

_NO_MAPPING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window ``[start, end)`` in local wall time.

    ``start > end`` crosses midnight (22:00-07:00). ``start == end`` is no window at all, not a
    whole day: a recipient who wants no notifications opts out instead. ``timezone`` None means
    the recipient's own zone, and UTC when they have none.
    """

    start: dt.time
    end: dt.time
    timezone: str | None = None

    def contains(self, wall: dt.time) -> bool:
        """Whether a local wall-clock time lies inside the window."""
        if self.start < self.end:
            return self.start <= wall < self.end
        if self.start > self.end:
            return wall >= self.start or wall < self.end
        return False


@dataclass(frozen=True, slots=True)
class Preferences:
    """Opt-outs per channel and per category, and quiet hours. Absent means allowed."""

    channels: Mapping[str, bool]
    categories: Mapping[str, Mapping[str, bool]]
    quiet_hours: QuietHours | None

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Preferences:
        """Preferences from their stored/API JSON shape (already validated); None is none."""
        if not value:
            return EMPTY
        categories = {
            name: MappingProxyType(dict(settings))
            for name, settings in (value.get("categories") or {}).items()
        }
        return cls(
            channels=MappingProxyType(dict(value.get("channels") or {})),
            categories=MappingProxyType(categories),
            quiet_hours=_quiet_from_json(value.get("quiet_hours")),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored/API JSON shape; ``from_json`` reads it back to an equal value."""
        quiet = self.quiet_hours
        return {
            "channels": dict(self.channels),
            "categories": {name: dict(s) for name, s in self.categories.items()},
            "quiet_hours": None if quiet is None else _quiet_to_json(quiet),
        }

    def allows(self, category: str, channel: str) -> bool:
        """The category's own setting for the channel, else the channel-wide one, else yes."""
        own = self.categories.get(category, _NO_MAPPING).get(channel)
        if own is not None:
            return bool(own)
        return bool(self.channels.get(channel, True))


EMPTY = Preferences(channels=_NO_MAPPING, categories=_NO_MAPPING, quiet_hours=None)


@dataclass(frozen=True, slots=True)
class CategoryPolicy:
    """What the planner needs to know about a notification's category."""

    name: str
    critical: bool = False
    default_channels: tuple[str, ...] | None = None
    max_per_hour: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Every candidate channel lands in exactly one of the three."""

    send_now: tuple[str, ...]
    deferred: Mapping[str, dt.datetime]  # channel -> aware UTC instant the quiet window ends
    suppressed: Mapping[str, str]  # channel -> reason


def candidate_channels(
    template_channels: Sequence[str],
    requested: Sequence[str] | None,
    category: CategoryPolicy,
) -> list[str]:
    """The template's channels in its order, narrowed to those requested.

    Without a request, a category's ``default_channels`` narrow them instead.
    """
    wanted = requested if requested is not None else category.default_channels
    return [c for c in template_channels if wanted is None or c in wanted]


def decide(
    *,
    channels: Sequence[str],
    preferences: Preferences,
    recipient_timezone: str | None,
    category: CategoryPolicy,
    priority: str,
    now: dt.datetime,
) -> Decision:
    """Send now, defer past quiet hours, or suppress, for each channel.

    A critical category or ``critical`` priority overrides both opt-outs and quiet hours.
    """
    _require_aware(now)
    wanted = list(dict.fromkeys(channels))
    if category.critical or priority == Priority.CRITICAL:
        return Decision(tuple(wanted), MappingProxyType({}), MappingProxyType({}))
    quiet = preferences.quiet_hours
    until = None
    if quiet is not None:
        until = quiet_window_end(now, quiet, zone_for(quiet, recipient_timezone))
    send_now: list[str] = []
    deferred: dict[str, dt.datetime] = {}
    suppressed: dict[str, str] = {}
    for channel in wanted:
        if not preferences.allows(category.name, channel):
            suppressed[channel] = OPTED_OUT
        elif until is not None and channel in INTERRUPTIVE:
            deferred[channel] = until
        else:
            send_now.append(channel)
    return Decision(tuple(send_now), MappingProxyType(deferred), MappingProxyType(suppressed))


def zone_for(quiet: QuietHours, recipient_timezone: str | None) -> ZoneInfo:
    """The zone quiet hours are read in: their own, else the recipient's, else UTC.

    A name the zone database does not know falls back to UTC rather than failing a send.
    """
    name = quiet.timezone or recipient_timezone or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_window_end(now: dt.datetime, quiet: QuietHours, zone: ZoneInfo) -> dt.datetime | None:
    """None when ``now`` is outside the window; otherwise the aware UTC instant it ends.

    The end is the next local occurrence of ``quiet.end`` after ``now`` at which the wall clock
    is outside the window. When a clock change skips that wall time, the window ends when the
    clock jumps (the first instant after the gap); when a clock change repeats it, the first
    occurrence still ahead of ``now`` counts.
    """
    _require_aware(now)
    # Compare instants in UTC only: aware datetimes sharing a tzinfo compare by wall time.
    now_utc = now.astimezone(UTC)
    local = now_utc.astimezone(zone)
    if not quiet.contains(local.time()):
        return None
    # Two days ahead is enough even when a gap swallows the whole of one day's free slot.
    for days in range(3):
        day = local.date() + dt.timedelta(days=days)
        for instant in _occurrences(day, quiet.end, zone):
            if instant > now_utc and not quiet.contains(instant.astimezone(zone).time()):
                return instant
    raise RuntimeError(f"quiet hours in {zone.key} never end")  # pragma: no cover


def _occurrences(day: dt.date, wall: dt.time, zone: ZoneInfo) -> list[dt.datetime]:
    """The UTC instants the zone's clock shows ``wall`` on ``day``, in order.

    One normally, two when the clock goes back over it, and the instant the clock jumps
    when it skips it.
    """
    naive = dt.datetime.combine(day, wall.replace(tzinfo=None))
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return sorted({first, second})
    # In a gap, fold=0 reads the wall time with the offset from before the jump (an instant
    # after it) and fold=1 with the offset from after (an instant before it).
    return [_jump_between(second, first, zone)]


def _jump_between(before: dt.datetime, after: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The instant the zone's UTC offset changes, between two instants on either side."""
    offset = before.astimezone(zone).utcoffset()
    # Zone transitions fall on whole seconds: bisect over POSIX seconds.
    low, high = int(before.timestamp()) - 1, int(after.timestamp()) + 1
    while high - low > 1:
        middle = (low + high) // 2
        if dt.datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return dt.datetime.fromtimestamp(high, UTC)


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")


def _quiet_from_json(value: Mapping[str, Any] | None) -> QuietHours | None:
    if not value:
        return None
    return QuietHours(
        start=dt.time.fromisoformat(value["start"]),
        end=dt.time.fromisoformat(value["end"]),
        timezone=value.get("timezone") or None,
    )


def _quiet_to_json(quiet: QuietHours) -> dict[str, Any]:
    out: dict[str, Any] = {"start": _wall(quiet.start), "end": _wall(quiet.end)}
    if quiet.timezone is not None:
        out["timezone"] = quiet.timezone
    return out


def _wall(value: dt.time) -> str:
    whole_minute = value.second == 0 and value.microsecond == 0
    return value.isoformat(timespec="minutes" if whole_minute else "auto")
