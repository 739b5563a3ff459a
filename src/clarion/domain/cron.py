"""Cron expressions: checked once, then the due times they give in a time zone.

The parsing and the walk through the calendar are cronsim's (the library Healthchecks
uses, which follows Debian's cron, DST quirks included): a time that a clock change skips
runs right after the change, a time that it repeats runs once. Only the standard five
fields are taken (minute, hour, day of month, month, day of week, with names such as
``MON-FRI``); cronsim's optional seconds field is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

MAX_LENGTH = 100
# The timezone of a schedule that runs at the cron time in each recipient's own zone.
RECIPIENT = "recipient"
# Recipients with no time zone get a recipient schedule at the cron time in UTC.
DEFAULT_ZONE = "UTC"


class CronError(ValueError):
    """An expression that is not a five-field cron expression with a due time."""


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` if there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class Cron:
    expression: str

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """The expression, checked: five fields, each in range, and due at least once in
        the next fifty years (``CronError`` says which field is wrong)."""
        text = " ".join(expression.split())
        if not text or len(text) > MAX_LENGTH:
            raise CronError(f"a cron expression takes 1 to {MAX_LENGTH} characters")
        if len(text.split(" ")) != 5:
            raise CronError(
                "a cron expression has five fields: minute hour day-of-month month day-of-week"
            )
        cron = cls(text)
        try:
            cron.next_after(DEFAULT_ZONE, datetime.now(UTC))
        except CronSimError as exc:
            raise CronError(f"not a valid cron expression: {str(exc).lower()}") from exc
        except LookupError as exc:
            raise CronError("this cron expression is never due") from exc
        return cron

    def _walk(self, zone_name: str, after: datetime) -> Iterator[datetime]:
        # The instant after `after`, as a wall time in the zone; cronsim steps from there.
        start = after.astimezone(zone(zone_name))
        walk = CronSim(self.expression, start)
        while True:
            try:
                local = next(walk)
            except (StopIteration, OverflowError, ValueError):
                return  # none in fifty years, or past the calendar's end (year 9999)
            yield local.astimezone(UTC)

    def next_after(self, zone_name: str, after: datetime) -> datetime:
        """The first due time strictly after ``after`` (UTC); ``LookupError`` if none."""
        for due in self._walk(zone_name, after):
            if due > after:
                return due
        raise LookupError("never due")

    def between(
        self, zone_name: str, after: datetime, until: datetime, limit: int
    ) -> list[datetime]:
        """The due times in (``after``, ``until``], in order, at most ``limit`` of them
        (the latest ones when there are more)."""
        found: list[datetime] = []
        for due in self._walk(zone_name, after):
            if due > until:
                break
            if due > after:
                found.append(due)
                if len(found) > limit:
                    del found[0]
        return found


_JUST_BEFORE = timedelta(microseconds=1)


def window_start(after: datetime, starts_at: datetime | None) -> datetime:
    """The instant after which due times count: ``after``, or just before ``starts_at``
    (a due time at ``starts_at`` itself counts)."""
    if starts_at is not None and starts_at - _JUST_BEFORE > after:
        return starts_at - _JUST_BEFORE
    return after


def next_look(
    cron: Cron,
    zones: list[str],
    after: datetime,
    *,
    starts_at: datetime | None,
    ends_at: datetime | None,
    rescan: datetime | None,
) -> datetime | None:
    """When a scheduler should next look at a schedule: its first due time after
    ``after`` in any of ``zones``, no later than ``rescan`` (a ``recipient`` schedule's
    zones can change), None once it has no due time left before ``ends_at``."""
    start = window_start(after, starts_at)
    times: list[datetime] = []
    for name in zones:
        with contextlib.suppress(LookupError):
            times.append(cron.next_after(name, start))
    candidates = [at for at in times if ends_at is None or at <= ends_at]
    if rescan is not None and (ends_at is None or after < ends_at):
        candidates.append(rescan if ends_at is None else min(rescan, ends_at))
    return min(candidates) if candidates else None
