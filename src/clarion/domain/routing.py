"""A recipient's address on each channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clarion.domain.models import Channel


def address_for(channel: str, recipient: Mapping[str, Any]) -> Any:
    """The recipient's address on a channel, or None when it has none."""
    if channel == Channel.EMAIL:
        return recipient.get("email") or None
    if channel == Channel.SMS:
        return recipient.get("phone") or None
    if channel == Channel.PUSH:
        return list(recipient.get("push_tokens") or []) or None
    if channel == Channel.WEBPUSH:
        return list(recipient.get("webpush") or []) or None
    if channel == Channel.WEBHOOK:
        return recipient.get("webhook_url") or None
    if channel == Channel.CHAT:
        return list(recipient.get("chat") or []) or None
    if channel == Channel.WHATSAPP:
        # A number of its own when the recipient gave one, else the phone number.
        return recipient.get("whatsapp") or recipient.get("phone") or None
    if channel == Channel.INAPP:
        return recipient["id"]
    return None
