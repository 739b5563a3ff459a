"""The provider interface: one method that sends one message.

A provider knows only its own wire protocol and how to classify its failures: it raises
:class:`~clarion.errors.TransientError` (worth retrying) or
:class:`~clarion.errors.PermanentError` (never). Retries, rate limits, circuit breakers and
status recording are layers around it, not inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One delivery, rendered and addressed, ready for a provider."""

    delivery_id: str
    tenant_id: str
    notification_id: str
    recipient_id: str
    channel: str
    to: Any
    content: dict[str, Any]
    priority: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str | None = None


class Provider(ABC):
    """Sends messages of one channel through one service."""

    kind: str = "base"

    @abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Send, or raise TransientError / PermanentError."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pools and background writers."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close connections; called once at shutdown."""
