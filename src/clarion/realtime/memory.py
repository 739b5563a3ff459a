"""The in-process hub (the embedded default): every connection lives in this process."""

from __future__ import annotations

import orjson

from clarion.realtime.base import Event, Hub


class MemoryHub(Hub):
    async def publish(self, tenant_id: str, recipient_id: str, event: Event) -> None:
        # Through JSON and back, as over Redis: what cannot travel fails here too.
        self.deliver((tenant_id, recipient_id), orjson.loads(orjson.dumps(event)))
