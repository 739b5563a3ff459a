"""Delivery status notifications (RFC 3464): the bounce messages mail servers send back.

A DSN is a ``multipart/report; report-type=delivery-status`` message: a part for people,
a ``message/delivery-status`` part (a block of per-message fields, then one block per
recipient: ``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``, ...), and
usually the returned message or its headers (``message/rfc822``,
``text/rfc822-headers``), which carry Clarion's ``X-Clarion-Delivery-Id``.

A recipient whose ``Action`` is ``failed`` with a ``5.x.x`` status bounced hard; a
``4.x.x`` status, or ``Action: delayed``, is a soft bounce; ``delivered``, ``relayed`` and
``expanded`` say nothing against the address. The address is the ``Original-Recipient``
(the one Clarion sent to) when the report gives it, else the ``Final-Recipient``.
"""

from __future__ import annotations

import email
import re
from email import policy
from email.message import Message
from email.parser import HeaderParser

from clarion.domain.feedback import Feedback, FeedbackKind, feedback

DELIVERY_HEADER = "X-Clarion-Delivery-Id"
_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}")
# A report lists at most this many recipients (a message to one recipient: one).
MAX_RECIPIENTS = 100


class NotADsn(ValueError):
    """The message is not a delivery status notification."""


def read_dsn(raw: bytes) -> list[Feedback]:
    """The bounces a DSN reports, one per failed or delayed recipient (soft bounces
    included, each marked so); :class:`NotADsn` for a message that is not one."""
    try:
        message = email.message_from_bytes(raw, policy=policy.compat32)
    except (RecursionError, ValueError, LookupError) as exc:  # nesting past any real report
        raise NotADsn(f"not a readable message: {type(exc).__name__}") from exc
    if message.get_content_type() != "multipart/report":
        raise NotADsn("not a multipart/report message")
    if str(message.get_param("report-type") or "").lower() != "delivery-status":
        raise NotADsn("not a report of type delivery-status")
    parts = message.get_payload()
    if not isinstance(parts, list):
        raise NotADsn("the report has no parts")
    blocks: list[Message] | None = None
    delivery_id: str | None = None
    for part in parts:
        if not isinstance(part, Message):
            continue
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks = [block for block in payload if isinstance(block, Message)]
        elif kind in ("message/rfc822", "message/global", "text/rfc822-headers"):
            delivery_id = delivery_id or _delivery_id(part)
    if not blocks:
        raise NotADsn("the report has no delivery-status part")
    # The first block holds the per-message fields; each following one a recipient.
    found = [_recipient(block, delivery_id) for block in blocks[1 : MAX_RECIPIENTS + 1]]
    return [item for item in found if item is not None]


def _field(block: Message, name: str) -> str:
    """A field's text ("" when absent); one holding 8-bit bytes comes as a ``Header``."""
    value = block.get(name)
    return str(value) if value is not None else ""


def _recipient(block: Message, delivery_id: str | None) -> Feedback | None:
    action = _field(block, "Action").strip().lower()
    status = _STATUS.match(_field(block, "Status"))
    if action == "failed" and status is not None and status.group(1) == "5":
        kind = FeedbackKind.HARD_BOUNCE
    elif action in ("failed", "delayed"):
        kind = FeedbackKind.SOFT_BOUNCE
    else:
        return None
    address = _address(_field(block, "Original-Recipient")) or _address(
        _field(block, "Final-Recipient")
    )
    detail = " ".join(
        value.split(";", 1)[-1].strip() if name == "Diagnostic-Code" else value
        for name in ("Status", "Diagnostic-Code")
        if (value := _field(block, name))
    )
    return feedback(address, kind, detail, delivery_id)


def _address(field: str) -> str | None:
    """``rfc822; alex@example.com`` → ``alex@example.com`` (other address types: None)."""
    kind, _, address = field.partition(";")
    if kind.strip().lower() not in ("rfc822", "utf-8"):
        return None
    return address.strip() or None


def _delivery_id(part: Message) -> str | None:
    """The ``X-Clarion-Delivery-Id`` of the returned message or headers."""
    payload = part.get_payload()
    if isinstance(payload, list):
        returned = payload[0] if payload and isinstance(payload[0], Message) else None
    else:
        # text/rfc822-headers: text, perhaps in a transfer encoding.
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
        returned = HeaderParser(policy=policy.compat32).parsestr(text, headersonly=True)
    value = returned.get(DELIVERY_HEADER) if returned is not None else None
    return str(value).strip() or None if value else None
