"""The in-app provider: stores the message in the recipient's inbox (one per delivery)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.providers.base import OutboundMessage
from clarion.providers.stored import StoredProvider
from clarion.store import messages


class InAppProvider(StoredProvider):
    kind = "inapp"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, messages.insert_inbox_messages)

    def row(self, message: OutboundMessage) -> dict[str, Any]:
        # The id derives from the delivery: a repeated send finds the message already there.
        return {
            "id": "msg_" + message.delivery_id.removeprefix("dlv_"),
            "tenant_id": message.tenant_id,
            "recipient_id": message.recipient_id,
            "delivery_id": message.delivery_id,
            "content": message.content,
        }
