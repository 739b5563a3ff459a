"""The sandbox provider: captures every message for the admin console and the API.

With the embedded default, email, SMS and push go here, so a new user sees every message
without an account anywhere. Captures are written in batches.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.ids import new_id
from clarion.providers.base import OutboundMessage, Provider, SendResult
from clarion.store import messages
from clarion.store.batching import Batcher


class SandboxProvider(Provider):
    kind = "sandbox"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer: Batcher[dict[str, object], None] = Batcher(
            self._flush, max_items=1000, name="sandbox-writer"
        )

    async def start(self) -> None:
        self._writer.start()

    async def _flush(self, rows: list[dict[str, object]]) -> list[None]:
        await messages.insert_sandbox_messages(self._engine, rows)
        return [None] * len(rows)

    async def send(self, message: OutboundMessage) -> SendResult:
        capture_id = new_id("sbx")
        await self._writer.submit(
            {
                "id": capture_id,
                "tenant_id": message.tenant_id,
                "delivery_id": message.delivery_id,
                "channel": message.channel,
                "recipient_id": message.recipient_id,
                "to": message.to,
                "content": message.content,
            }
        )
        return SendResult(provider_message_id=capture_id)

    async def aclose(self) -> None:
        await self._writer.close()
