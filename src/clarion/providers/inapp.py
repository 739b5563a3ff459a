"""The in-app provider: stores the message in the recipient's inbox (one per delivery)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.providers.base import OutboundMessage, Provider, SendResult
from clarion.store import messages
from clarion.store.batching import Batcher


class InAppProvider(Provider):
    kind = "inapp"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer: Batcher[dict[str, object], None] = Batcher(
            self._flush, max_items=1000, name="inbox-writer"
        )

    async def start(self) -> None:
        self._writer.start()

    async def _flush(self, rows: list[dict[str, object]]) -> list[None]:
        await messages.insert_inbox_messages(self._engine, rows)
        return [None] * len(rows)

    async def send(self, message: OutboundMessage) -> SendResult:
        # The id derives from the delivery: a repeated send finds the message already there.
        message_id = "msg_" + message.delivery_id.removeprefix("dlv_")
        await self._writer.submit(
            {
                "id": message_id,
                "tenant_id": message.tenant_id,
                "recipient_id": message.recipient_id,
                "delivery_id": message.delivery_id,
                "content": message.content,
            }
        )
        return SendResult(provider_message_id=message_id)

    async def aclose(self) -> None:
        await self._writer.close()
