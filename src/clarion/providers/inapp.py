"""The in-app provider: stores the message in the recipient's inbox (one per delivery),
then tells the recipient's live connections (after the commit, never before)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from clarion.domain.delivery import Delivery
from clarion.domain.durations import duration_seconds
from clarion.providers.stored import StoredProvider
from clarion.realtime.base import Hub, arrivals
from clarion.store import inbox_changes
from clarion.store.db import AsyncEngine
from clarion.store.pg import PgPool

log = logging.getLogger(__name__)


class InAppProvider(StoredProvider):
    kind = "inapp"

    def __init__(
        self, engine: AsyncEngine, hub: Hub | None = None, pg: PgPool | None = None
    ) -> None:
        super().__init__(engine, self._store)
        self._hub = hub
        self._pg = pg

    def row(self, message: Delivery) -> dict[str, Any]:
        # The id derives from the delivery: a repeated send finds the message already there.
        content = dict(message.content)
        after = content.pop("fallback_after", None)
        channel = content.pop("fallback_channel", None)
        fallback = None
        if isinstance(after, str) and isinstance(channel, str):
            with contextlib.suppress(ValueError):  # checked when the template was stored
                fallback = (duration_seconds(after), channel)
        return {
            "id": "msg_" + message.id.removeprefix("dlv_"),
            "tenant_id": message.tenant,
            "recipient_id": message.recipient,
            "delivery_id": message.id,
            "notification_id": message.notification,
            "content": content,
            "category": message.category,
            "fallback": fallback,
        }

    async def _store(self, engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
        stored = await inbox_changes.insert(engine, rows, self._pg)
        if self._hub is None or not stored:
            return
        events = arrivals(stored)
        try:
            await self._hub.publish_many(events)
        except Exception as exc:
            # Stored is delivered: a client that missed the push resumes from the table.
            log.warning("live push of %d inbox message(s) failed: %r", len(events), exc)
