"""A delivery's new state: what an attempt (or a decision not to attempt) leads to.

A channel worker makes one :class:`StatusChange` per attempt, the status writer stores a
batch of them in one statement (``store/deliveries.py::apply_changes``) and makes their
status events. The change carries the :class:`~clarion.domain.delivery.Delivery` it is
about, so an event names the delivery's notification, recipient and channel with no copy.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from clarion.domain.bounded import bounded
from clarion.domain.delivery import Delivery

# What is kept of a provider's words: the error, and the message id (its column's size).
MAX_ERROR = 2000
MAX_MESSAGE_ID = 255


class StatusChange(msgspec.Struct, frozen=True, gc=False):
    """Immutable; a ``msgspec.Struct`` since a worker makes one per send. Not tracked by
    the garbage collector: it holds plain data and a delivery, which never refer back."""

    delivery_id: str
    tenant_id: str
    status: str
    attempts: int
    reason: str | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    scheduled_for: datetime | None = None
    sent_at: datetime | None = None
    # The provider that took the attempt (failover may pick another than the planned one).
    provider: str | None = None
    # Set when the change is the outcome of an attempt: its number (stored on the event
    # row, the timeline's `attempt` event), how long the provider call took, and the class
    # of its error (timeout, transient, permanent, internal).
    attempt: int | None = None
    latency_ms: int | None = None
    error_class: str | None = None
    # Why a retry was scheduled (the error's reason): on the event only, the delivery's
    # `reason` stays what the API documents.
    retry_reason: str | None = None
    # Not stored: the delivery the change is about, for its status event.
    delivery: Delivery | None = None
    # Not stored: the attempt's traceparent, linked from the status write's span (tracing).
    trace: str | None = None

    def bound(self) -> StatusChange:
        """The change with what came from a provider's answer made storable, before it
        reaches a shared batch (itself when nothing needed it, as is usual)."""
        last_error = bounded(self.last_error, MAX_ERROR)
        message_id = bounded(self.provider_message_id, MAX_MESSAGE_ID)
        if last_error == self.last_error and message_id == self.provider_message_id:
            return self
        return msgspec.structs.replace(self, last_error=last_error, provider_message_id=message_id)
