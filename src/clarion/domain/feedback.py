"""What mailbox providers report back about email that was sent: bounces and complaints.

A report names one address each (:class:`Feedback`). A hard bounce (the address does not
exist, the domain does not accept mail) and a complaint (the recipient marked the message
as spam) put the address on its tenant's suppression list; a soft bounce (a full mailbox,
a greylisting server, a message blocked for its content) is recorded and suppresses
nothing, since the next message may well go through.

Each service's own words are read by its module (``providers/ses_feedback.py``,
``providers/sendgrid_events.py``, ``domain/dsn.py``) into these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from clarion.domain.bounded import bounded

# What is kept of a provider's diagnostic ("550 5.1.1 <alex@example.com>: user unknown").
MAX_DETAIL = 1000
MAX_ADDRESS = 320


class SuppressionReason(StrEnum):
    """Why an address is suppressed: also the reason of a delivery not sent to it."""

    BOUNCED = "bounced"
    COMPLAINED = "complained"


class SuppressionSource(StrEnum):
    """Who said so."""

    SES = "ses"
    SENDGRID = "sendgrid"
    DSN = "dsn"
    OPERATOR = "operator"


class FeedbackKind(StrEnum):
    """What a report says, as the metrics and logs name it."""

    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"


@dataclass(frozen=True, slots=True)
class Feedback:
    """One address a provider reported on. ``delivery_id``: the delivery the report is
    about, when the report carries it back (SendGrid's custom args, the
    ``X-Clarion-Delivery-Id`` header of the returned message)."""

    address: str
    kind: FeedbackKind
    detail: str | None = None
    delivery_id: str | None = None

    @property
    def suppresses(self) -> SuppressionReason | None:
        """The reason this report puts the address on the list, None when it does not."""
        if self.kind is FeedbackKind.HARD_BOUNCE:
            return SuppressionReason.BOUNCED
        if self.kind is FeedbackKind.COMPLAINT:
            return SuppressionReason.COMPLAINED
        return None


def feedback(
    address: object, kind: FeedbackKind, detail: object = None, delivery_id: object = None
) -> Feedback | None:
    """A report's entry made from what a provider sent (anything), bounded; None when it
    names no address."""
    if not isinstance(address, str) or "@" not in address or len(address) > MAX_ADDRESS:
        return None
    address = address.strip().strip("<>")
    if bounded(address, MAX_ADDRESS) != address or any(c.isspace() for c in address):
        return None  # control characters, or not one address
    if not address.rpartition("@")[0].isascii() or "\ufffd" in address:
        return None  # Clarion sends to ASCII mailbox names only; or undecodable bytes
    text = bounded(str(detail), MAX_DETAIL) if detail not in (None, "") else None
    ident = delivery_id if isinstance(delivery_id, str) and 0 < len(delivery_id) <= 40 else None
    return Feedback(address, kind, text, ident)
