"""The sandbox provider: captures every message for the admin console and the API.

With the embedded default, email, SMS and push go here, so a new user sees every message
without an account anywhere.
"""

from __future__ import annotations

from typing import Any

from clarion.domain.delivery import Delivery
from clarion.domain.ids import new_id
from clarion.providers.stored import StoredProvider
from clarion.store import messages
from clarion.store.db import AsyncEngine


class SandboxProvider(StoredProvider):
    kind = "sandbox"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, messages.insert_sandbox_messages)

    def row(self, message: Delivery) -> dict[str, Any]:
        return {
            "id": new_id("sbx"),
            "tenant_id": message.tenant,
            "delivery_id": message.id,
            "channel": message.channel,
            "recipient_id": message.recipient,
            "to": message.to,
            "content": message.content,
        }
