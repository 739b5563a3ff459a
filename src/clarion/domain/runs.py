"""A workflow run's rules, apart from any store: what its expressions say, what a step's
outcome is, and what the run does next.

A run walks its workflow's steps in order (pipeline/runs.py stores and wakes it). Each step's
outcome is kept in the run as a record (:class:`StepRecord`); expressions read the earlier
ones as ``steps.<id>`` (:func:`expression_context`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError

from clarion.domain.durations import duration_seconds
from clarion.domain.ids import derived_timed_id
from clarion.domain.models import DeliveryStatus
from clarion.domain.workflows import SANDBOX, Step, reads_steps


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    THROTTLED = "throttled"
    DIGESTED = "digested"
    FAILED = "failed"


ENDED = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.CANCELLED,
        RunStatus.THROTTLED,
        RunStatus.DIGESTED,
        RunStatus.FAILED,
    }
)

# A step's own status, beside its deliveries' (`sent`, `delivered`, `failed`, ...).
SKIPPED = "skipped"  # its `if` was false, or it had nothing to send
WAITING = "waiting"  # a delay not over, or a channel step whose outcome is not known yet
DONE = "completed"  # a delay that is over
EXITED = "exited"  # an `exit` step whose condition held
PASSED = "passed"  # a `throttle` step under its limit
DIGESTED = "digested"  # a `digest` step that joined another run's window
# A digest key longer than this is stored as its hash.
MAX_DIGEST_KEY = 200

# The order of a channel step's deliveries' statuses, best first: a step with several
# deliveries (`mode: all`) shows its best one.
_RANK = (
    DeliveryStatus.DELIVERED,
    DeliveryStatus.SENT,
    DeliveryStatus.SENDING,
    DeliveryStatus.QUEUED,
    DeliveryStatus.SCHEDULED,
    DeliveryStatus.FAILED,
    DeliveryStatus.DEAD,
    DeliveryStatus.SUPPRESSED,
    DeliveryStatus.CANCELLED,
)
SUCCEEDED = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED})
# A delivery in one of these will not be sent: `first_success` goes on to its next channel.
GAVE_UP = frozenset(
    {
        DeliveryStatus.FAILED,
        DeliveryStatus.DEAD,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.CANCELLED,
    }
)
# How long a `first_success` step waits before it looks at its delivery again: from the
# first to the last of these seconds, doubling.
FIRST_LOOK = 1.0
LAST_LOOK = 60.0


@dataclass(slots=True)
class StepRecord:
    """What became of one step of a run: its status, when it was reached and ended, and
    the deliveries it made (a channel step: in the order its channels were tried)."""

    id: str
    status: str
    at: float
    ended_at: float | None = None
    deliveries: list[str] = field(default_factory=list)
    # A channel step: each channel planned so far, and its delivery (none: nothing was made).
    channels: dict[str, list[str]] = field(default_factory=dict)
    # A `first_success` step: the index of the channel being tried.
    tried: int = 0
    # A delay: when it ends (epoch seconds); a digest step that opened its window: when
    # the window closes.
    until: float | None = None
    # A digest step that joined another run's window: that run (which carries the digest).
    into: str | None = None
    # A digest step whose window closed: how many triggers it collected, and the data of
    # the first of them (up to the cap).
    count: int | None = None
    events: list[Any] | None = None
    # The step of a category digest's carrier (``~digest``): the window it closes
    # (digest_windows.id).
    window: str | None = None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"id": self.id, "status": self.status, "at": self.at}
        optional = {
            "ended_at": self.ended_at,
            "deliveries": list(self.deliveries),
            "channels": dict(self.channels),
            "tried": self.tried,
            "until": self.until,
            "into": self.into,
            "window": self.window,
        }
        shown.update((name, value) for name, value in optional.items() if value)
        # A count of 0 says something too: a category digest whose every notification was
        # cancelled.
        if self.count is not None:
            shown["count"] = self.count
        if self.events is not None:
            shown["events"] = list(self.events)
        return shown

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StepRecord:
        return cls(
            id=raw["id"],
            status=raw["status"],
            at=raw["at"],
            ended_at=raw.get("ended_at"),
            deliveries=list(raw.get("deliveries", ())),
            channels={k: list(v) for k, v in raw.get("channels", {}).items()},
            tried=raw.get("tried", 0),
            until=raw.get("until"),
            into=raw.get("into"),
            count=raw.get("count"),
            events=None if raw.get("events") is None else list(raw["events"]),
            window=raw.get("window"),
        )


@dataclass(frozen=True, slots=True)
class DeliveryFacts:
    """What a step's expression may read of one of its deliveries."""

    status: str
    seen: bool = False
    read: bool = False
    archived: bool = False
    # Of an email delivery whose category tracks them (docs/tracking.md); a click counts
    # as an open.
    opened: bool = False
    clicked: bool = False


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return SANDBOX.compile_expression(source)


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """The value of an expression (checked when its workflow was stored) over ``context``.
    One that reads something missing, or that the sandbox stops, is None."""
    try:
        return _compiled(source)(**context)
    except (UndefinedError, SecurityError, TemplateRuntimeError, TypeError, ValueError):
        return None


def holds(source: str | None, context: Mapping[str, Any]) -> bool:
    """Whether a step's ``if`` holds (a step without one always runs)."""
    if source is None:
        return True
    try:
        return bool(evaluate(source, context))
    except UndefinedError:
        return False


def step_status(facts: Sequence[DeliveryFacts]) -> str:
    """A channel step's status: its best delivery's (none made: skipped)."""
    if not facts:
        return SKIPPED
    statuses = {f.status for f in facts}
    return next((s for s in _RANK if s in statuses), facts[0].status)


def step_view(record: StepRecord, facts: Sequence[DeliveryFacts]) -> dict[str, Any]:
    """``steps.<id>`` for an expression: the step's status, for its in-app deliveries
    whether the message was seen, read or archived, and for its email ones whether it was
    opened or clicked."""
    status = record.status
    if record.deliveries and status not in (SKIPPED, EXITED):
        status = step_status(facts)
    return {
        "status": status,
        "seen": any(f.seen for f in facts),
        "read": any(f.read for f in facts),
        "archived": any(f.archived for f in facts),
        "opened": any(f.opened for f in facts),
        "clicked": any(f.clicked for f in facts),
    }


def run_id(notification_id: str, recipient_id: str) -> str:
    """A run's id: one per (notification, recipient), so a replayed plan stores it once."""
    return derived_timed_id("run", notification_id, notification_id, recipient_id)


def expression_context(
    data: Mapping[str, Any],
    recipient: Mapping[str, Any],
    steps: Mapping[str, dict[str, Any]],
    digest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {"data": data, "recipient": recipient, "steps": steps, "digest": digest}


def digest_key(value: Any, recipient_id: str) -> str:
    """The key of a digest step's window: always the recipient's, and within it the ``key``
    expression's value when it gives one, so a digest only ever carries its own
    recipient's triggers. A long one is kept by its hash (a key is stored, up to
    :data:`MAX_DIGEST_KEY` characters)."""
    key = recipient_id if value is None or value == "" else f"{recipient_id}:{value}"
    if len(key) <= MAX_DIGEST_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def carried(records: Sequence[StepRecord]) -> dict[str, Any] | None:
    """``digest`` for expressions and templates: the count and events of the last digest
    window this run carried and closed (None before any)."""
    for record in reversed(records):
        if record.count is not None and record.ended_at is not None:
            return {"count": record.count, "events": list(record.events or ())}
    return None


def window_seconds(step: Step) -> float:
    """A `digest` step's window."""
    return float(duration_seconds(step.fields["window"]))


def delay_seconds(step: Step) -> float | None:
    """A `delay` step's length, when it is given as a duration."""
    duration = step.fields.get("duration")
    return None if duration is None else float(duration_seconds(duration))


def channels_of(step: Step) -> list[str]:
    """A channel step's channels, in the order they are tried."""
    one = step.fields.get("channel")
    return [one] if one is not None else list(step.fields["channels"])


def walks_ahead(steps: Sequence[Step], delay: int) -> bool:
    """Whether the steps after the delay at index ``delay`` may be walked before the delay
    ends (their deliveries scheduled for its end): up to the next delay, or the end, they
    are channel and exit steps none of whose ``if`` reads a step. What such steps do rests
    on the run's data, its recipient and the digest it carries, known already; what a
    step's delivery became (sent, seen, read) goes on changing until the delay ends, and
    a throttle or digest step counts triggers as they come."""
    for step in steps[delay + 1 :]:
        if step.type == "delay":
            return True
        if step.type not in ("channel", "exit"):
            return False
        if step.condition is not None and reads_steps(step.condition):
            return False
    return True


def first_success(step: Step) -> bool:
    return step.fields.get("channels") is not None and step.fields.get("mode") == "first_success"


def next_look(since: float, now: float) -> float:
    """When a step waiting on its delivery since ``since`` looks at it again."""
    waited = max(now - since, 0.0)
    return now + min(max(FIRST_LOOK, waited), LAST_LOOK)
