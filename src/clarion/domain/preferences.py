"""A recipient's preferences: which channels they opted out of, and when not to interrupt them.

``decide`` is the one rule the planner applies per recipient: each candidate channel is sent
now, deferred (to the end of the quiet window or of a snooze), held for the category's
digest, or suppressed. Quiet hours defer, never drop; a snooze defers or drops, as the
category says.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clarion.domain.models import Channel, Priority

UTC = dt.UTC
OPTED_OUT = "opted_out"
# A delivery folded into a digest (its data travels in the digest's ``items``).
HELD_FOR_DIGEST = "digest"
# What arrived while the recipient was snoozed, in a category that drops it then.
SNOOZED = "snoozed"

# Quiet hours protect a person's attention, so they hold back only the channels that buzz,
# ring or land in an inbox someone watches (a chat or WhatsApp message notifies its reader
# too). An
# in-app inbox entry waits silently until the person looks, and a webhook is read by a
# machine: deferring those would only delay them.
INTERRUPTIVE: frozenset[str] = frozenset(
    {Channel.EMAIL, Channel.SMS, Channel.PUSH, Channel.WEBPUSH, Channel.CHAT, Channel.WHATSAPP}
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
    # A temporary opt-out of every non-critical send, until this aware UTC instant.
    snooze_until: dt.datetime | None = None
    # Opt-outs per workflow (docs/workflows.md), the most specific of all.
    workflows: Mapping[str, Mapping[str, bool]] = field(default_factory=lambda: _NO_MAPPING)

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Preferences:
        """Preferences from their stored/API JSON shape (already validated); None is none."""
        if not value:
            return EMPTY
        categories = {
            name: MappingProxyType(dict(settings))
            for name, settings in (value.get("categories") or {}).items()
        }
        workflows = {
            key: MappingProxyType(dict(settings))
            for key, settings in (value.get("workflows") or {}).items()
        }
        return cls(
            channels=MappingProxyType(dict(value.get("channels") or {})),
            categories=MappingProxyType(categories),
            quiet_hours=_quiet_from_json(value.get("quiet_hours")),
            snooze_until=_instant_from_json(value.get("snooze_until")),
            workflows=MappingProxyType(workflows),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored/API JSON shape; ``from_json`` reads it back to an equal value."""
        quiet = self.quiet_hours
        return {
            "channels": dict(self.channels),
            "categories": {name: dict(s) for name, s in self.categories.items()},
            "quiet_hours": None if quiet is None else _quiet_to_json(quiet),
            "snooze_until": _instant_to_json(self.snooze_until),
            "workflows": {key: dict(s) for key, s in self.workflows.items()},
        }

    def snoozed(self, now: dt.datetime) -> bool:
        """Whether a snooze is on at ``now``: it ends by itself when its time has come."""
        return self.snooze_until is not None and now < self.snooze_until

    def allows(self, category: str, channel: str, workflow: str | None = None) -> bool:
        """The workflow's own setting for the channel (a workflow send), else the
        category's, else the channel-wide one, else yes."""
        if workflow is not None:
            mine = self.workflows.get(workflow, _NO_MAPPING).get(channel)
            if mine is not None:
                return bool(mine)
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
    max_per_day: int | None = None
    # What becomes of a notification over a cap: "drop" | "defer" | "digest" (then the
    # digest holds only what is over a cap, not everything).
    overflow: str = "drop"
    # Seconds a digest window stays open (None: the category has no digest), and the data
    # field whose value splits a recipient's digests (None: one digest per channel).
    digest_window: int | None = None
    digest_key: str | None = None
    # What arrives while the recipient is snoozed: "defer" (to the snooze's end) | "drop".
    during_snooze: str = "defer"
    # Open and click tracking of its email (docs/tracking.md): off unless the category says.
    track_opens: bool = False
    track_clicks: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """Every candidate channel lands in exactly one of the four."""

    send_now: tuple[str, ...]
    deferred: Mapping[str, dt.datetime]  # channel -> aware UTC instant to send at
    suppressed: Mapping[str, str]  # channel -> reason
    held: tuple[str, ...] = ()  # channels held for the category's digest
    # channel -> why it is deferred, when not for quiet hours ("snoozed")
    deferred_for: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


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
    digestible: Collection[str] = (),
    workflow: str | None = None,
) -> Decision:
    """Send now, defer, hold for a digest, or suppress, for each channel.

    A critical category or ``critical`` priority overrides opt-outs, snooze, digests and
    quiet hours. Otherwise, in this order: an opted-out channel (for ``workflow``'s sends,
    for the category, or everywhere) is suppressed; a snooze
    drops the channel (``during_snooze: drop``) or lets the rest decide and defers what
    would go sooner to the snooze's end; a channel in ``digestible`` (the template has
    digest content for it) of a category with a digest is held; quiet hours defer the
    channels that interrupt.
    """
    _require_aware(now)
    wanted = list(dict.fromkeys(channels))
    if category.critical or priority == Priority.CRITICAL:
        return Decision(tuple(wanted), MappingProxyType({}), MappingProxyType({}))
    quiet = preferences.quiet_hours
    until = None
    if quiet is not None:
        until = quiet_window_end(now, quiet, zone_for(quiet, recipient_timezone))
    snooze_end = preferences.snooze_until if preferences.snoozed(now) else None
    after_snooze = None
    if snooze_end is not None and quiet is not None:
        # The snooze may end inside quiet hours: then those channels wait for their end.
        after_snooze = quiet_window_end(snooze_end, quiet, zone_for(quiet, recipient_timezone))
    send_now: list[str] = []
    deferred: dict[str, dt.datetime] = {}
    suppressed: dict[str, str] = {}
    held: list[str] = []
    snoozing: dict[str, str] = {}
    # With `overflow: digest` the digest is for what is over a cap (pipeline/throttle.py).
    hold = category.digest_window is not None and category.overflow != "digest"
    for channel in wanted:
        if not preferences.allows(category.name, channel, workflow):
            suppressed[channel] = OPTED_OUT
        elif snooze_end is not None and category.during_snooze == "drop":
            suppressed[channel] = SNOOZED
        elif hold and channel in digestible:
            held.append(channel)
        elif snooze_end is not None:
            interrupts = channel in INTERRUPTIVE
            deferred[channel] = (after_snooze if interrupts else None) or snooze_end
            snoozing[channel] = SNOOZED
        elif until is not None and channel in INTERRUPTIVE:
            deferred[channel] = until
        else:
            send_now.append(channel)
    return Decision(
        tuple(send_now),
        MappingProxyType(deferred),
        MappingProxyType(suppressed),
        tuple(held),
        MappingProxyType(snoozing),
    )


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


def _instant_from_json(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    instant = dt.datetime.fromisoformat(value)
    return instant.astimezone(UTC) if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def _instant_to_json(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
