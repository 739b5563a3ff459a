"""A delivery on its way to a provider: the one value every stage reads, planner to status.

The planner makes a :class:`Delivery` for each recipient and channel (with the state it is
stored in: :class:`Stored`), the store writes it, and it is published as it is; the
sweeper, embedded recovery and dead-letter replay have the store read it back. A channel
worker reads it from the broker (:func:`decode_delivery`), hands it to a provider as it
is, and a retry is the same delivery asking for its next attempt. The wire form is the
struct's own JSON with stable keys, so messages published by an earlier version still
decode.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from clarion.domain.models import Channel, DeliveryStatus, Priority, retry_stream, send_stream


class MalformedDelivery(ValueError):
    """A send message that is not a delivery (a missing or mistyped field)."""


_TRACEPARENT_LENGTH = 55
# A W3C traceparent: version, trace id, span id and flags.
Traceparent = Annotated[
    str, msgspec.Meta(min_length=_TRACEPARENT_LENGTH, max_length=_TRACEPARENT_LENGTH)
]


class Delivery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One delivery, addressed and rendered: the value the planner makes, the broker carries,
    the worker reads and a provider sends.

    Immutable; a ``msgspec.Struct`` since a worker reads one per send: decoding and
    encoding are msgspec's (:func:`decode_delivery`; the broker encodes a struct as it is),
    with no copy in between. The field names are the wire's, so messages published by an
    earlier version still decode; a field at its default is left off the wire (an earlier
    version reads it as absent). Not tracked by the garbage collector (``gc=False``): what
    it holds is plain data, which never refers back to it.

    ``to`` is the channel's address: an email address, an E.164 phone number, a list of
    push tokens (``{"platform", "token"}``), a list of web push subscriptions, a URL, or the
    recipient id for in-app; ``content`` the rendered content of its channel.
    """

    id: str
    tenant: str
    notification: str
    recipient: str
    channel: str
    # The planned provider (failover may send through another).
    provider: str | None = None
    priority: str
    to: Any = None
    content: Any = None
    # The number of the try this message asks for (1 for the first).
    attempt: Annotated[int, msgspec.Meta(ge=1)]
    # When it stops being worth delivering (epoch seconds), if it has a deadline.
    expires_at: float | None = None
    # From the template's category.
    category: str | None = None
    critical: bool = False
    # For a critical delivery: the channel, address and content to switch to when its own
    # channel has no healthy provider.
    fallback: dict[str, Any] | None = None
    # The W3C traceparent of the trace it belongs to (observability/tracing.py), when
    # tracing is on; optional on the wire, absent otherwise.
    trace: Traceparent | None = msgspec.field(default=None, name="traceparent")

    @property
    def stream(self) -> str:
        """The lane it is published to: its priority's for a first try, the channel's retry
        lane for a later one (a critical delivery keeps its own lane)."""
        if self.attempt > 1 and self.priority != Priority.CRITICAL:
            return retry_stream(self.channel)
        return send_stream(self.channel, self.priority)

    def next_attempt(self) -> Delivery:
        return msgspec.structs.replace(self, attempt=self.attempt + 1)


class Stored(msgspec.Struct, frozen=True, gc=False):
    """A delivery with the state it is stored in. The planner makes one per recipient and
    channel (``queued``; ``scheduled`` until a quiet window or a cap's slot ends;
    ``suppressed``; ``failed``) and the store writes it; the store reads back those waiting
    to be published again (the sweeper, embedded recovery, a replayed plan)."""

    delivery: Delivery
    status: str = DeliveryStatus.QUEUED
    reason: str | None = None
    # When a ``scheduled`` delivery is due (also a waiting retry's, read back).
    scheduled_for: datetime | None = None
    last_error: str | None = None


# Where msgspec says a send message's traceparent is not one.
_AT_TRACEPARENT = "`$.traceparent`"


def decode_delivery(payload: Any) -> Delivery:
    """The delivery of a send message as the broker hands it out (a JSON object, decoded);
    :class:`MalformedDelivery` if it is not one. A malformed traceparent is left out, never
    a reason to drop the work."""
    try:
        return msgspec.convert(payload, Delivery)
    except msgspec.ValidationError as exc:
        if str(exc).endswith(_AT_TRACEPARENT) and isinstance(payload, Mapping):
            return decode_delivery({k: v for k, v in payload.items() if k != "traceparent"})
        raise MalformedDelivery(f"not a delivery: {exc}") from exc


def endpoint_of(payload: Mapping[str, Any]) -> str | None:
    """Where a send message goes, for the per-endpoint share of a worker: the host (and
    port) of a webhook's URL, else the provider; None when the message does not say."""
    if payload.get("channel") == Channel.WEBHOOK:
        url = payload.get("to")
        if isinstance(url, str):
            return url_endpoint(url)
    provider = payload.get("provider")
    return provider if isinstance(provider, str) else None


@functools.lru_cache(maxsize=4096)
def url_endpoint(url: str) -> str | None:
    """The host and port of a URL, lower case; None for one without a host. Cached: a
    worker asks once per send, mostly about the same few URLs."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    return netloc.rpartition("@")[2].lower() or None
