"""Value types shared by every stage."""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    WEBPUSH = "webpush"
    INAPP = "inapp"
    WEBHOOK = "webhook"
    CHAT = "chat"
    WHATSAPP = "whatsapp"


# Every channel, in the order declared above: the one list of them.
ALL_CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


# Lanes in the order a worker takes them: a critical message never waits behind a lower one.
LANES: tuple[Priority, ...] = (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW)
# The lanes whose notifications are planned from the plan stream (by its leader,
# pipeline/lead.py) and whose retries have the retry lane; a worker given none of them
# (`clarion worker --lanes critical,high`) plans only urgent notifications and reads no
# retries.
BULK_LANES: frozenset[str] = frozenset({Priority.NORMAL, Priority.LOW})


class NotificationStatus(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    COMPLETED = "completed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"
    # Shown, never stored: cancelled, with attempts claimed before the cancellation still
    # being made (deliveries `sending`); `cancelled` once none is left.
    CANCELLING = "cancelling"
    # Planning failed on this notification alone, every time (see the planner).
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    DEAD = "dead"
    # Its notification was cancelled before it was sent (``DELETE /v1/notifications/{id}``).
    CANCELLED = "cancelled"


# A delivery that waits to be sent: now (`queued`) or at its due time (`scheduled`: a
# retry, or the end of a quiet window).
WAITING_STATUSES: tuple[DeliveryStatus, ...] = (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED)

TERMINAL_STATUSES = frozenset(
    {
        DeliveryStatus.CANCELLED,
        DeliveryStatus.SENT,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.FAILED,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.DEAD,
    }
)


class Scope(StrEnum):
    SEND = "send"
    READ = "read"
    MANAGE = "manage"
    ADMIN = "admin"


ALL_SCOPES: tuple[Scope, ...] = tuple(Scope)


def send_stream(channel: str, lane: str) -> str:
    """The broker stream that carries a channel's deliveries of one priority."""
    return f"send.{channel}.{lane}"


# The lane of a channel's retries (but a critical delivery's, which keep its own lane): a
# worker reads it after the priority lanes and gives it a bounded share of its sends, so a
# backlog of retries to failing endpoints never stands in front of fresh work.
RETRY_LANE = "retry"


def retry_stream(channel: str) -> str:
    """The broker stream that carries a channel's retries."""
    return send_stream(channel, RETRY_LANE)


def channel_streams(channel: str) -> list[str]:
    """Every stream a channel's workers read, in the order they take them."""
    return [*(send_stream(channel, lane) for lane in LANES), retry_stream(channel)]


PLAN_STREAM = "plan"
# Critical notifications to plan: a stream every planner reads at once, never waiting for
# the plan stream's leader (pipeline/lead.py) or behind other notifications.
PLAN_CRITICAL_STREAM = "plan.critical"
# High-priority notifications to plan: read likewise, apart from critical ones, so that a
# worker given the high lane alone (`clarion worker --lanes high`) plans those.
PLAN_HIGH_STREAM = "plan.high"
# The chunks of topic sends being planned (pipeline/planner.py): a stream of their own, so
# that a broadcast's chunks never stand in front of other notifications' planning.
CHUNK_STREAM = "plan.chunks"
PLAN_STREAMS: tuple[str, ...] = (PLAN_CRITICAL_STREAM, PLAN_HIGH_STREAM, PLAN_STREAM, CHUNK_STREAM)
# Each urgent lane's plan stream, read by the planners of the workers that take the lane.
URGENT_PLAN_STREAMS: dict[str, str] = {
    Priority.CRITICAL: PLAN_CRITICAL_STREAM,
    Priority.HIGH: PLAN_HIGH_STREAM,
}


def urgent_plan_streams(lanes: Collection[str]) -> list[str]:
    """The urgent plan streams of these lanes, critical first."""
    return [stream for lane, stream in URGENT_PLAN_STREAMS.items() if lane in lanes]


def plan_stream(priority: str | None) -> str:
    """The stream a notification of this priority is planned from."""
    return URGENT_PLAN_STREAMS.get(priority or "", PLAN_STREAM)
