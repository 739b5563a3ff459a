"""Which channels a notification goes out on for a recipient, and to what address."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clarion.domain.models import Channel


@dataclass(frozen=True, slots=True)
class Route:
    channel: str
    address: Any  # None when the recipient has no address for the channel


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
    if channel == Channel.INAPP:
        return recipient["id"]
    return None


def choose_routes(
    template_channels: Sequence[str],
    requested: Sequence[str] | None,
    recipient: Mapping[str, Any],
) -> list[Route]:
    """The template's channels, narrowed to those requested, each with its address."""
    wanted = [c for c in template_channels if requested is None or c in requested]
    return [Route(channel, address_for(channel, recipient)) for channel in wanted]
