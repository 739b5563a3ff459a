"""One live inbox connection, whatever carries it (Server-Sent Events or a WebSocket).

A session subscribes to the hub first, then reads what the client missed from the inbox
table, so nothing committed in between is lost; a message that comes both ways is sent
once (the session remembers the ids it sent). Every batch of events is followed by the
recipient's counts, read after the change was committed.

Events sent to the client:

- ``{"type": "message", "message": {...}}`` a new message (or one back from snooze);
- ``{"type": "changed", "action": "read" | ..., "ids": [...] | null}`` messages changed
  (``ids`` null: many, as with read-all);
- ``{"type": "count", "unread": N, "unseen": N, "total": N}``;
- ``{"type": "reset", "reason": ...}`` more was missed than a resume replays, or the
  resume id is unknown: reload the list;
- ``{"type": "closed", "reason": ...}`` the server ends the connection
  (``too_slow``, ``revoked``, ``token_expired``, ``resync``, ``server_stopping``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from clarion.realtime.base import Event, Subscription
from clarion.realtime.gate import InboxGate
from clarion.security.inbox_tokens import RecipientClaims
from clarion.store import inbox

# "Everything from the start": the resume id of a connection that has seen no message.
FROM_START = "0"
_REMEMBERED = 2048


class LiveSession:
    def __init__(self, gate: InboxGate, claims: RecipientClaims, sub: Subscription) -> None:
        self.gate = gate
        self.claims = claims
        self.sub = sub
        self._sent: OrderedDict[str, None] = OrderedDict()
        # The id of the newest message this client holds: what it resumes after.
        self.cursor = FROM_START

    async def open(self) -> list[Event]:
        """What a new connection first gets: its counts (and it resumes from the newest
        message there is)."""
        newest = await inbox.newest(
            self.gate.engine, self.claims.tenant_id, self.claims.recipient_id
        )
        if newest is not None:
            self.cursor = newest.id
        return [await self.count()]

    async def resume(self, after: str) -> list[Event]:
        """The messages after ``after``, oldest first, that this connection has not sent,
        then the counts."""
        tenant_id, recipient_id = self.claims.tenant_id, self.claims.recipient_id
        position = None
        if after != FROM_START:
            position = await inbox.position(self.gate.engine, tenant_id, recipient_id, after)
            if position is None:
                return [{"type": "reset", "reason": "unknown_message"}, await self.count()]
        missed = await inbox.since(self.gate.engine, tenant_id, recipient_id, position)
        if len(missed) > inbox.RESUME_LIMIT:
            return [{"type": "reset", "reason": "too_many_missed"}, await self.count()]
        events = [self._message(m) for m in missed if m["id"] not in self._sent]
        return [e for e in events if e is not None] + [await self.count()]

    async def translate(self, batch: list[Event]) -> list[Event]:
        """Hub events to client events: messages already sent are dropped, and the batch
        ends with the counts."""
        out: list[Event] = []
        for event in batch:
            if event.get("type") == "message":
                message = event.get("message")
                if isinstance(message, dict) and message.get("id") not in self._sent:
                    sent = self._message(message)
                    if sent is not None:
                        out.append(sent)
            elif event.get("type") == "changed":
                out.append(event)
        out.append(await self.count())
        return out

    async def count(self) -> Event:
        counts = await inbox.counts(
            self.gate.engine, self.claims.tenant_id, self.claims.recipient_id
        )
        return {"type": "count", **counts}

    def _message(self, message: dict[str, Any]) -> Event | None:
        ident = message.get("id")
        if not isinstance(ident, str):
            return None
        self._sent[ident] = None
        if len(self._sent) > _REMEMBERED:
            self._sent.popitem(last=False)
        self.cursor = ident
        return {"type": "message", "message": message}
