"""A provider whose "send" is a row in Clarion's own database, written in batches."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from clarion.domain.delivery import Delivery
from clarion.providers.base import Provider, SendResult
from clarion.store.batching import Batcher
from clarion.store.db import AsyncEngine

Insert = Callable[[AsyncEngine, list[dict[str, Any]]], Awaitable[None]]


class StoredProvider(Provider):
    """Rows of concurrent sends share one INSERT; a send returns once its row is stored."""

    def __init__(self, engine: AsyncEngine, insert: Insert) -> None:
        self._engine = engine
        self._insert = insert
        # Two writes in flight: a send that arrives while a large batch is being written
        # (a broadcast's) goes out in the next one without waiting for it.
        self._writer: Batcher[dict[str, Any], None] = Batcher(
            self._flush, max_items=1000, concurrency=2, name=f"{self.kind}-writer"
        )

    @abstractmethod
    def row(self, message: Delivery) -> dict[str, Any]:
        """The row that records ``message``; its ``id`` is the provider's message id."""

    async def start(self) -> None:
        self._writer.start()

    async def _flush(self, rows: list[dict[str, Any]]) -> list[None]:
        await self._insert(self._engine, rows)
        return [None] * len(rows)

    async def send(self, message: Delivery) -> SendResult:
        row = self.row(message)
        await self._writer.submit(row)
        return SendResult(provider_message_id=row["id"])

    async def aclose(self) -> None:
        await self._writer.close()
